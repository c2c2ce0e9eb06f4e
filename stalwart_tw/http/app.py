"""
The node's web server: a Klein app bound to the node's services.

At this stage it serves the Session URL's authentication: without valid
credentials the client gets 401 and the Basic challenge; with them, a
Session document naming the user. The JMAP Core capability fills the Session
in; errors are RFC 7807 problem documents in JSON throughout.
"""

import orjson
from klein import Klein

from stalwart_tw.auth.basic import CHALLENGE, parse_basic
from stalwart_tw.logs import Logger

PROBLEM_TYPE = "application/problem+json"


def problem(request, status, title, detail, problem_type="about:blank"):
    """
    Answer with an RFC 7807 problem document.
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", PROBLEM_TYPE.encode())
    return orjson.dumps(
        {"type": problem_type, "status": status, "title": title, "detail": detail}
    )


def json_response(request, document):
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
    return orjson.dumps(document)


class JmapHttp:
    """
    The HTTP routes of one node.

    @param directory: the L{Directory} that verifies logins.
    @param settings: the node's L{Settings}.
    @param is_ready: a zero-argument callable, true once the node's data is
        open; until then every route answers 503.
    """

    app = Klein()
    log = Logger()

    def __init__(self, directory, settings, is_ready):
        self._directory = directory
        self._settings = settings
        self._is_ready = is_ready

    def resource(self):
        return self.app.resource()

    def _unavailable(self, request):
        request.setHeader(b"Retry-After", b"5")
        return problem(request, 503, "Service Unavailable", "The server is starting.")

    def _challenge(self, request):
        request.setHeader(b"WWW-Authenticate", CHALLENGE)
        return problem(request, 401, "Unauthorized", "You have to authenticate first.")

    async def _authenticate(self, request):
        credentials = parse_basic(request.getHeader(b"Authorization"))
        if credentials is None:
            return None
        return await self._directory.authenticate(*credentials)

    @app.handle_errors(Exception)
    def server_error(self, request, failure):
        # One place turns any failure into a problem document a client can read.
        self.log.failure("{method} {path} failed", failure,
                         method=request.method.decode("ascii", "replace"),
                         path=request.path.decode("ascii", "replace"))
        return problem(
            request, 500, "Internal Server Error", "The server failed to process the request."
        )

    @app.route("/.well-known/jmap", methods=["GET"])
    async def session(self, request):
        if not self._is_ready():
            return self._unavailable(request)
        principal = await self._authenticate(request)
        if principal is None:
            return self._challenge(request)
        return json_response(
            request,
            {"username": principal.name, "apiUrl": f"{self._settings.jmap_url}/jmap/"},
        )
