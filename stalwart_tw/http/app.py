"""
The node's web server: a Klein app bound to the node's services.

Routes: the Session resource (at /.well-known/jmap and /jmap/session) and
the API endpoint (POST /jmap/). Every route but the Session's challenge
needs HTTP Basic credentials; errors are RFC 7807 problem documents in JSON
throughout, JMAP's request-level problem types where they apply.

Request bodies of up to L{INLINE_PARSE_LIMIT} bytes are decoded on the
reactor thread (quicker than a thread hop); larger ones on the worker pool,
so a big request never stalls other clients.
"""

import orjson
from klein import Klein
from twisted.internet.threads import deferToThreadPool

from stalwart_tw.auth.basic import CHALLENGE, parse_basic
from stalwart_tw.jmap.core import register_core
from stalwart_tw.jmap.dispatch import MethodRegistry, run_request
from stalwart_tw.jmap.errors import LIMIT, NOT_JSON, RequestError
from stalwart_tw.jmap.request import parse_request
from stalwart_tw.jmap.session import session_document
from stalwart_tw.logs import Logger

PROBLEM_TYPE = "application/problem+json"
INLINE_PARSE_LIMIT = 64 * 1024


def problem(request, status, title, detail, problem_type="about:blank"):
    """
    Answer with an RFC 7807 problem document.
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", PROBLEM_TYPE.encode())
    return orjson.dumps(
        {"type": problem_type, "status": status, "title": title, "detail": detail}
    )


def jmap_problem(request, error):
    """
    Answer with the problem document of a request-level JMAP error.
    """
    request.setResponseCode(error.status)
    request.setHeader(b"Content-Type", PROBLEM_TYPE.encode())
    return orjson.dumps(error.problem())


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

    def __init__(self, directory, settings, is_ready, threadpool=None, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._directory = directory
        self._settings = settings
        self._is_ready = is_ready
        self._threadpool = threadpool
        self.methods = MethodRegistry()
        register_core(self.methods)

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
    @app.route("/jmap/session", methods=["GET"])
    async def session(self, request):
        if not self._is_ready():
            return self._unavailable(request)
        principal = await self._authenticate(request)
        if principal is None:
            return self._challenge(request)
        return json_response(request, session_document(self._settings, principal))

    @app.route("/jmap", methods=["POST"])
    @app.route("/jmap/", methods=["POST"])
    async def api(self, request):
        if not self._is_ready():
            return self._unavailable(request)
        principal = await self._authenticate(request)
        if principal is None:
            return self._challenge(request)
        try:
            parsed = await self._parse(request)
        except RequestError as error:
            return jmap_problem(request, error)
        state = session_document(self._settings, principal)["state"]
        response = await run_request(self.methods, parsed, principal, state)
        return json_response(request, response)

    async def _parse(self, request):
        content_type = (request.getHeader(b"Content-Type") or b"application/json").lower()
        if content_type.split(b";")[0].strip() != b"application/json":
            raise RequestError(NOT_JSON, "the request's Content-Type is not application/json")
        body = request.content.read()
        limit = self._settings.max_size_request
        if len(body) > limit:
            raise RequestError(
                LIMIT,
                f"the request is {len(body)} bytes; the server takes at most {limit}",
                limit="maxSizeRequest",
            )
        arguments = (body, self.methods.capabilities(), self._settings.max_calls_in_request)
        if len(body) <= INLINE_PARSE_LIMIT or self._threadpool is None:
            return parse_request(*arguments)
        return await deferToThreadPool(self._reactor, self._threadpool, parse_request, *arguments)
