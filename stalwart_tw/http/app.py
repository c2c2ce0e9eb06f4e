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
from twisted.web.server import Request, Site

from stalwart_tw.auth.basic import CHALLENGE, parse_basic
from stalwart_tw.auth.concurrency import ConcurrencyLimit, LimitReached
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


def _content_length(request):
    try:
        return int(request.getHeader(b"Content-Length") or 0)
    except ValueError:
        return 0


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


ALLOWED_METHODS = b"GET, POST, OPTIONS"
# Named one by one: a bare "*" does not cover Authorization.
ALLOWED_HEADERS = b"Authorization, Content-Type, Accept, Last-Event-ID, Cache-Control"
EXPOSED_HEADERS = b"Content-Disposition, WWW-Authenticate, Retry-After, Content-Length"
PREFLIGHT_MAX_AGE = b"86400"


class CorsPolicy:
    """
    Which web pages may read the server's answers.

    Permissive (the default): any origin, credentials included, so a web
    client served from anywhere can use the server. Strict (strict-cors):
    only pages of the server's own origin, taken from jmap-url.
    """

    def __init__(self, settings):
        self._strict = settings.strict_cors
        self._own_origin = _origin_of(settings.jmap_url)

    def allows(self, origin):
        return not self._strict or origin == self._own_origin

    def apply(self, request):
        """
        Set the CORS headers of a response to C{request}.
        """
        origin = request.getHeader(b"Origin")
        request.setHeader(b"Vary", b"Origin")
        if origin is None or not self.allows(origin):
            return
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        request.setHeader(b"Access-Control-Expose-Headers", EXPOSED_HEADERS)
        if request.method == b"OPTIONS":
            request.setHeader(b"Access-Control-Allow-Methods", ALLOWED_METHODS)
            request.setHeader(b"Access-Control-Allow-Headers", ALLOWED_HEADERS)
            request.setHeader(b"Access-Control-Max-Age", PREFLIGHT_MAX_AGE)


def _origin_of(url):
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/')[0]}".encode("ascii")


class JmapRequest(Request):
    """
    A request of the JMAP site: CORS headers on every answer (errors and
    401s included, so a web client can read why a call failed), preflights
    answered before routing (no credentials asked, never redirected), and a
    body that stops being stored once it passes the site's largest limit,
    so no client can make the server buffer without bound.

    @ivar body_size: bytes of body received.
    @ivar body_too_large: the body passed the limit and was not kept whole.
    """

    body_size = 0
    body_too_large = False

    def gotLength(self, length):
        super().gotLength(length)
        if length is not None and length > self.channel.site.max_body:
            self.body_too_large = True

    def handleContentChunk(self, data):
        self.body_size += len(data)
        if self.body_size > self.channel.site.max_body:
            self.body_too_large = True
        if not self.body_too_large:
            super().handleContentChunk(data)

    def process(self):
        site = self.channel.site
        site.cors.apply(self)
        if self.method == b"OPTIONS":
            self.site = site
            self.setResponseCode(204)
            self.finish()
            return
        super().process()


def make_site(http, settings):
    """
    @return: the twisted.web Site serving the app of C{http}.
    """
    site = Site(http.resource(), requestFactory=JmapRequest)
    site.displayTracebacks = False
    site.cors = CorsPolicy(settings)
    site.max_body = max(settings.max_size_request, settings.max_size_upload)
    return site


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
        self._requests = ConcurrencyLimit(settings.max_concurrent_requests)

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
        return json_response(request, await self._session(principal))

    async def _session(self, principal):
        group_ids = await self._directory.groups_of(principal.id)
        groups = [await self._directory.get_by_id(group_id) for group_id in group_ids]
        return session_document(self._settings, principal, [g for g in groups if g])

    @app.route("/jmap", methods=["POST"])
    @app.route("/jmap/", methods=["POST"])
    async def api(self, request):
        if not self._is_ready():
            return self._unavailable(request)
        principal = await self._authenticate(request)
        if principal is None:
            return self._challenge(request)
        try:
            with self._requests.slot(principal.id):
                parsed = await self._parse(request)
                state = (await self._session(principal))["state"]
                response = await run_request(self.methods, parsed, principal, state)
        except RequestError as error:
            return jmap_problem(request, error)
        except LimitReached:
            return jmap_problem(request, RequestError(
                LIMIT,
                f"{self._requests.limit} requests of this account are already in progress",
                status=429,
                limit="maxConcurrentRequests",
            ))
        return json_response(request, response)

    async def _parse(self, request):
        content_type = (request.getHeader(b"Content-Type") or b"application/json").lower()
        if content_type.split(b";")[0].strip() != b"application/json":
            raise RequestError(NOT_JSON, "the request's Content-Type is not application/json")
        limit = self._settings.max_size_request
        size = max(getattr(request, "body_size", 0), _content_length(request))
        if getattr(request, "body_too_large", False) or size > limit:
            raise RequestError(
                LIMIT,
                f"the request is {size} bytes; the server takes at most {limit}",
                limit="maxSizeRequest",
            )
        body = request.content.read()
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
