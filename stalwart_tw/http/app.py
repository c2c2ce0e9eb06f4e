"""
The node's web server: a Klein app bound to the node's services.

Routes: the Session resource (at /.well-known/jmap and /jmap/session), the
API endpoint (POST /jmap/), uploads (POST /jmap/upload/<accountId>/) and
downloads (GET /jmap/download/<accountId>/<blobId>/<name>?accept=<type>).
Every route but the Session's challenge needs HTTP Basic credentials; errors
are RFC 7807 problem documents in JSON throughout, JMAP's request-level
problem types where they apply.

Blobs. An account the user cannot reach, a malformed blob id and a blob the
account does not hold all answer the same 404, so a probe learns nothing
about other accounts or about who stored what. A download is an attachment
whatever type the client asks for (with nosniff), so no blob is ever
rendered as a page of this origin; its name goes in RFC 5987 form only,
every byte outside attr-char percent-encoded, so no name can break the
header. Blob ids name immutable content: downloads may be cached for good,
privately.

Request bodies of up to L{INLINE_PARSE_LIMIT} bytes are decoded on the
reactor thread (quicker than a thread hop); larger ones on the worker pool,
so a big request never stalls other clients.
"""

import errno
import os
import re
from io import BytesIO
from urllib.parse import quote, unquote_to_bytes

import orjson
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.internet.threads import deferToThreadPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from stalwart_tw.auth.basic import CHALLENGE, parse_basic
from stalwart_tw.auth.concurrency import ConcurrencyLimit, LimitReached
from stalwart_tw.auth.ratelimit import FailedLogins, RateLimit, client_address
from stalwart_tw.http.channel import ConnectionLimits, JmapChannel, default_max_connections
from stalwart_tw.http.streaming import FileStreamer
from stalwart_tw.inflight import uncancellable
from stalwart_tw.jmap.errors import (
    LIMIT,
    NOT_JSON,
    REQUEST_ERROR_PREFIX,
    SERVER_UNAVAILABLE,
    RequestError,
)
from stalwart_tw.jmap.push import EventSourceStream, parse_eventsource_query
from stalwart_tw.jmap.request import parse_request
from stalwart_tw.jmap.session import account_id, account_number
from stalwart_tw.logs import Logger, debug_enabled
from stalwart_tw.store.directory import ADMIN_NAME, VerificationsBusy
from stalwart_tw.store.errors import BlobMissing

PROBLEM_TYPE = "application/problem+json"
# A write refused for want of space (or of quota on the file system).
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
INLINE_PARSE_LIMIT = 64 * 1024
# Seconds a client past a rate limit waits for its 429.
THROTTLE_DELAY = 1.0

DEFAULT_BLOB_TYPE = "application/octet-stream"
# type "/" subtype, each an RFC 9110 token; anything else is not echoed back.
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# RFC 5987 attr-char beyond what quote() always keeps.
_ATTR_CHAR_EXTRA = "!#$&+^`|"
DOWNLOAD_CACHE = b"private, immutable, max-age=31536000"


def problem(request, status, title, detail, problem_type="about:blank"):
    """
    Answer with an RFC 7807 problem document.
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", PROBLEM_TYPE.encode())
    return _sized(
        request,
        orjson.dumps({"type": problem_type, "status": status, "title": title, "detail": detail}),
    )


def _sized(request, body):
    # A known length spares keep-alive clients the chunked framing.
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _content_length(request):
    try:
        return int(request.getHeader(b"Content-Length") or 0)
    except ValueError:
        return 0


def check_body_size(request, limit, what, limit_name, size=None):
    """
    @return: the size of the body (received, declared, or C{size}).
    @raise RequestError: C{limit} naming C{limit_name} when it passes C{limit}.
    """
    if size is None:
        size = max(getattr(request, "body_size", 0), _content_length(request))
    if getattr(request, "body_too_large", False) or size > limit:
        raise RequestError(
            LIMIT, f"the {what} is {size} bytes; the server takes at most {limit}",
            limit=limit_name,
        )
    return size


def _read_and_parse(content, limit, capabilities, max_calls, max_depth):
    content.seek(0)
    body = content.read(limit + 1)
    if len(body) > limit:
        raise RequestError(
            LIMIT,
            f"the request is over {limit} bytes, the most the server takes",
            limit="maxSizeRequest",
        )
    return parse_request(body, capabilities, max_calls, max_depth)


def _busy(request, count, what, limit_name):
    # 429: the account already has as many of these in progress as allowed.
    error = RequestError(
        LIMIT, f"{count} {what} of this account are already in progress",
        status=429, limit=limit_name,
    )
    return jmap_problem(request, error)


def jmap_problem(request, error):
    """
    Answer with the problem document of a request-level JMAP error.
    """
    request.setResponseCode(error.status)
    request.setHeader(b"Content-Type", PROBLEM_TYPE.encode())
    return _sized(request, orjson.dumps(error.problem()))


def json_response(request, document):
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-cache, no-store, must-revalidate")
    return _sized(request, orjson.dumps(document))


ALLOWED_METHODS = b"GET, POST, OPTIONS"
# Named one by one: a bare "*" does not cover Authorization.
ALLOWED_HEADERS = b"Authorization, Content-Type, Accept, Last-Event-ID, Cache-Control"
EXPOSED_HEADERS = b"Content-Disposition, WWW-Authenticate, Retry-After, Content-Length"
PREFLIGHT_MAX_AGE = b"86400"


class CorsPolicy:
    """
    Which web pages may read the server's answers.

    Permissive (the default): any origin may read answers, but only to
    requests that carry their own Authorization header: the answer is
    C{Access-Control-Allow-Origin: *} without C{Allow-Credentials}, so a
    page cannot ride on credentials the browser has cached for the server.
    Strict (strict-cors): only pages of the server's own origin, taken from
    jmap-url.
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
        for name, value in self.headers(request.getHeader(b"Origin"), request.method):
            request.setHeader(name, value)

    def headers(self, origin, method):
        """
        @return: the CORS headers, as C{(name, value)} pairs, of an answer
            to a request from C{origin} (or C{None}) with C{method}.
        """
        if origin is None or not self.allows(origin):
            return []
        if self._strict:
            headers = [
                (b"Vary", b"Origin"),
                (b"Access-Control-Allow-Origin", origin),
                (b"Access-Control-Allow-Credentials", b"true"),
            ]
        else:
            headers = [(b"Access-Control-Allow-Origin", b"*")]
        headers.append((b"Access-Control-Expose-Headers", EXPOSED_HEADERS))
        if method == b"OPTIONS":
            headers += [
                (b"Access-Control-Allow-Methods", ALLOWED_METHODS),
                (b"Access-Control-Allow-Headers", ALLOWED_HEADERS),
                (b"Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
            ]
        return headers


def _origin_of(url):
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/')[0]}".encode("ascii")


class JmapRequest(Request):
    """
    A request of the JMAP site: CORS headers on every answer (errors and
    401s included, so a web client can read why a call failed), preflights
    answered before routing (no credentials asked, never redirected), and a
    body that stops being stored once it passes the site's largest limit,
    so no client can make the server buffer without bound. A body sent
    without credentials is not stored at all: its answer is a 401 whatever
    it holds. (Credentials are verified later, off the reactor; a request
    that carries some has its body kept until then.)

    @ivar body_size: bytes of body received.
    @ivar body_too_large: the body passed the limit and was not kept whole.
    @ivar body_discarded: the body was not kept (too large, or sent without
        credentials).
    """

    body_size = 0
    body_too_large = False
    body_discarded = False
    # The check of the credentials made when the headers arrived (a
    # Deferred of the principal or None), or None.
    early_login = None

    def gotLength(self, length):
        if self.method != b"OPTIONS" and parse_basic(self.getHeader(b"Authorization")) is None:
            self.body_discarded = True
            self.content = BytesIO()
            return
        super().gotLength(length)
        if length is not None and length > self.channel.site.max_body:
            self.body_too_large = self.body_discarded = True

    def handleContentChunk(self, data):
        self.body_size += len(data)
        if self.body_too_large:
            # Refused already (and maybe answered, the channel let go):
            # the rest of the body is dropped as it comes.
            return
        if self.body_size > self.channel.site.max_body:
            self.body_too_large = self.body_discarded = True
            # Refused now: nothing more of it is read (see http/channel.py).
            refuse = getattr(self.channel, "refuse_body", None)
            if refuse is not None:
                refuse(self)
        if not self.body_discarded:
            super().handleContentChunk(data)

    def process(self):
        site = self.channel.site
        site.cors.apply(self)
        fault = _request_fault(self)
        if fault is not None:
            self.site = site
            self.setHeader(b"Connection", b"close")
            self.write(problem(self, 400, "Bad Request", fault))
            self.finish()
            return
        if self.method == b"OPTIONS":
            self.site = site
            self.setResponseCode(204)
            self.finish()
            return
        super().process()


# A Host header's value (RFC 9110 section 7.2): a registered name or an IPv4
# address, or an IP literal in brackets, then maybe a port.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]*)?")


def _request_fault(request):
    """
    @return: why a request is malformed before any route sees it (its Host
        header, a path that is not UTF-8), or C{None}.
    """
    hosts = request.requestHeaders.getRawHeaders(b"Host") or []
    if len(hosts) > 1:
        return "The request has more than one Host header."
    if not hosts:
        if request.clientproto != b"HTTP/1.0":
            return "An HTTP/1.1 request needs a Host header."
    elif not _HOST.fullmatch(hosts[0]):
        return "The Host header is not a host name or address."
    try:
        unquote_to_bytes(request.path).decode("utf-8")
    except UnicodeDecodeError:
        return "The request's path is not UTF-8 once percent-decoded."
    return None


class JmapSite(Site):
    """
    The site of the JMAP endpoints. Its access log is a debug event of the
    server's log (log-level=debug shows it), not a line per request at the
    default level: at thousands of requests a second, that line is a large
    share of the work.
    """

    access_log = Logger()

    def log(self, request):
        if not debug_enabled():
            return
        self.access_log.debug(
            "{client} {method} {path} {code} {length}",
            client=request.getClientAddress().host if request.getClientAddress() else "-",
            method=request.method.decode("ascii", "replace"),
            path=request.uri.decode("ascii", "replace"),
            code=request.code,
            length=request.sentLength,
        )


def make_site(http, settings, reactor=None):
    """
    @param reactor: the IReactorTime of the site's timeouts (the global
        reactor by default).
    @return: the twisted.web Site serving the app of C{http}.
    """
    # JMAP bodies are JSON or blobs, never HTML forms: Twisted's form
    # parsing (a MIME parse of Content-Type per POST) would be wasted work.
    site = JmapSite(
        http.resource(), requestFactory=JmapRequest, parsePOSTFormSubmission=False,
        reactor=reactor,
    )
    site.protocol = JmapChannel
    site.displayTracebacks = False
    site.cors = CorsPolicy(settings)
    site.max_body = max(settings.max_size_request, settings.max_size_upload)
    site.check_login = http.check_login_early
    site.connection_limits = ConnectionLimits(
        settings.max_connections or default_max_connections(),
        settings.max_connections_per_address,
        settings.http_header_timeout,
        behind_proxy=settings.use_forwarded_header,
    )
    return site


class _FileName(PathConverter):
    # The rest of the path, "/" and line breaks included (PathConverter's
    # "." stops at a newline): a name holds whatever the client encoded.
    regex = r"[^/][\s\S]*?"


def _download_type(request):
    accept = request.args.get(b"accept", [b""])[0].decode("ascii", "replace")
    return accept if _MEDIA_TYPE.fullmatch(accept) else DEFAULT_BLOB_TYPE


def _attachment(name):
    return "attachment; filename*=UTF-8''" + quote(name, safe=_ATTR_CHAR_EXTRA)


def _body_source(content):
    """
    @return: the request body C{content} for the blob store: the bytes of
        a small body Twisted kept in memory, else a file of its own reading
        the spooled body from its start (Twisted closes C{content} when the
        client leaves, and the blob store may still be reading).
    """
    content.seek(0)
    try:
        descriptor = content.fileno()
    except (AttributeError, OSError, ValueError):
        return content.getvalue()
    return os.fdopen(os.dup(descriptor), "rb")


class JmapResource(Resource):
    """
    The root of the JMAP site. The API endpoint, called thousands of times
    a second, goes straight to its route; every other path goes through
    Klein's router, whose matching would cost as much as a small request.
    """

    isLeaf = True

    def __init__(self, http, routed):
        super().__init__()
        self._http = http
        self._routed = routed
        self._direct = http.direct_routes()

    def render(self, request):
        route = self._direct.get((request.method, request.path))
        if route is None:
            return self._routed.render(request)
        return self._http.serve_directly(route, request)


class Refused(Exception):
    """
    A route answers early (503, 401, 404): C{answer} is the body, the
    status and headers already set on the request.
    """

    def __init__(self, answer):
        super().__init__()
        self.answer = answer


class JmapHttp:
    """
    The HTTP routes of one node: bytes, credentials and limits around a
    L{JmapServer}, which does the JMAP.

    @param server: the node's L{JmapServer}.
    @param directory: the L{Directory} that verifies logins.
    @param settings: the node's L{Settings}.
    @param is_ready: a zero-argument callable, true once the node's data is
        open; until then every route answers 503.
    @param is_stopping: a zero-argument callable, true once the node is
        shutting down: its 503s then say so (C{serverUnavailable}), so a
        client on a kept-alive connection knows to go elsewhere or wait.
    @param threadpool: where large request bodies are decoded and blob
        files read.
    @param cluster: a zero-argument callable returning the cluster
        document of C{GET /admin/cluster}, or C{None}.
    @param clock: the IReactorTime rate limits count on (the reactor).
    """

    app = Klein()
    app.url_map.converters["filename"] = _FileName
    log = Logger()
    # Open event streams per user: enough for a browser's tabs and a few
    # devices, not enough to hold the server's connections hostage.
    event_streams_per_user = 32

    def __init__(self, server, directory, settings, is_ready, threadpool=None, reactor=None,
                 cluster=None, is_stopping=lambda: False, clock=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._server = server
        self._directory = directory
        self._settings = settings
        self._is_ready = is_ready
        self._is_stopping = is_stopping
        self._threadpool = threadpool
        self._cluster = cluster
        clock = reactor if clock is None else clock
        self._clock = clock
        self._failed_logins = FailedLogins(settings.rate_limit_auth, clock, self.log, "JMAP")
        self._anonymous = RateLimit(settings.rate_limit_anonymous, clock)
        self._authenticated = RateLimit(settings.rate_limit_authenticated, clock)
        self._requests = ConcurrencyLimit(settings.max_concurrent_requests)
        self._uploads = ConcurrencyLimit(settings.max_concurrent_uploads)
        self._event_streams = ConcurrencyLimit(self.event_streams_per_user)

    def resource(self):
        return JmapResource(self, self.app.resource())

    def direct_routes(self):
        """
        @return: C{(method, path)} -> route, for the routes served without
            Klein's router (L{JmapResource}).
        """
        return {(b"POST", b"/jmap"): self.api, (b"POST", b"/jmap/"): self.api}

    def serve_directly(self, route, request):
        """
        Run C{route} for C{request} as Klein runs a route: its answer
        written, a client that leaves cancels it, and a failure answered
        by this app's error handlers.
        """
        work = ensureDeferred(route(request))
        left = []

        def client_left(reason):
            left.append(reason)
            work.cancel()

        request.notifyFinish().addErrback(client_left)
        work.addErrback(self._direct_failure, request, left)
        work.addCallback(self._direct_answer, request, left)
        return NOT_DONE_YET

    def _direct_failure(self, failure, request, left):
        if left:
            if not failure.check(CancelledError):
                self.log.failure("route failed after its client left", failure)
            return None
        if failure.check(Refused):
            return self.refused(request, failure)
        return self.server_error(request, failure)

    def _direct_answer(self, body, request, left):
        if left or body is None:
            return
        request.write(body)
        request.finish()

    def _unavailable(self, request):
        request.setHeader(b"Retry-After", b"5")
        if self._is_stopping():
            return problem(
                request, 503, "Service Unavailable", "The server is shutting down.",
                REQUEST_ERROR_PREFIX + SERVER_UNAVAILABLE,
            )
        return problem(request, 503, "Service Unavailable", "The server is starting.")

    def _not_found(self, request, detail):
        return problem(request, 404, "Not Found", detail)

    def _no_blobs(self, request):
        return problem(request, 503, "Service Unavailable", "This node stores no blobs.")

    def _challenge(self, request):
        request.setHeader(b"WWW-Authenticate", CHALLENGE)
        return problem(request, 401, "Unauthorized", "You have to authenticate first.")

    def check_login_early(self, request):
        """
        For the channel, when a request's headers have arrived and a body
        follows: check its credentials before any of the body is kept.

        @return: C{None} when nothing needs checking (no credentials, a
            login verified moments ago, a node not ready), else a Deferred
            firing with the principal, or C{None} for a failed login; it
            fails with L{Refused} past a limit. The route takes the same
            outcome, so a login is never checked twice.
        """
        credentials = parse_basic(request.getHeader(b"Authorization"))
        if credentials is None or not self._is_ready():
            return None
        if self._directory.recently_verified(*credentials) is not None:
            return None
        checking = ensureDeferred(self._check_login(request, credentials))
        # The route takes the outcome too: (principal or None) or the
        # failure, never as an errback that a client who left would leave
        # unhandled (and logged). The channel hears None for a failure.
        outcome = Deferred()

        def forward(result):
            # In a list: a Failure given to callback would be an errback.
            outcome.callback([result])
            return None if isinstance(result, Failure) else result

        request.early_login = outcome
        return checking.addBoth(forward)

    async def _check_login(self, request, credentials):
        # A login not verified moments ago (callers ask the cache first).
        address = client_address(request, self._settings.use_forwarded_header)
        login = credentials[0]
        # Before any hashing: a throttled login costs nothing.
        wait = self._failed_logins.retry_after(address, login)
        if wait is not None:
            await self._throttle(
                request, wait,
                "Too many failed logins from this address or for this login; try again later.",
            )
        try:
            principal = await self._directory.authenticate(*credentials)
        except VerificationsBusy:
            self._failed_logins.busy(address)
            request.setHeader(b"Retry-After", b"1")
            raise Refused(problem(
                request, 503, "Service Unavailable",
                "Too many logins are being checked right now; try again in a second.",
            )) from None
        if principal is None:
            self._failed_logins.failed(address, login)
        return principal

    async def _throttle(self, request, wait, detail):
        request.setHeader(b"Retry-After", str(wait).encode("ascii"))
        # A client past a limit waits for its 429: one that asks again the
        # moment it is answered would otherwise keep the reactor busy
        # answering it (the connection caps bound how many can wait).
        await deferLater(self._clock, THROTTLE_DELAY, lambda: None)
        raise Refused(problem(request, 429, "Too Many Requests", detail))

    @app.handle_errors(Refused)
    def refused(self, request, failure):
        return failure.value.answer

    async def _caller(self, request):
        """
        @return: the authenticated principal of C{request}.
        @raise Refused: with a 503 while the node starts, a 401 and the
            challenge without valid credentials, a 429 past a rate limit.
        """
        if not self._is_ready():
            raise Refused(self._unavailable(request))
        credentials = parse_basic(request.getHeader(b"Authorization"))
        if credentials is None:
            address = client_address(request, self._settings.use_forwarded_header)
            wait = self._anonymous.take(address)
            if wait is not None:
                await self._throttle(
                    request, wait,
                    "Too many requests without credentials from this address; try again later.",
                )
            raise Refused(self._challenge(request))
        # Most requests come from a login verified moments ago: nothing
        # to wait for.
        principal = self._directory.recently_verified(*credentials)
        if principal is None and getattr(request, "early_login", None) is not None:
            # Checked when the headers arrived, before the body was read.
            (principal,) = await request.early_login
            if isinstance(principal, Failure):
                principal.raiseException()
        elif principal is None:
            principal = await self._check_login(request, credentials)
        if principal is None:
            raise Refused(self._challenge(request))
        wait = self._authenticated.take(principal.id)
        if wait is not None:
            await self._throttle(
                request, wait, "Too many requests for this account; try again later."
            )
        return principal

    async def _blob_caller(self, request, account):
        """
        @return: C{(principal, account number)} for a blob route.
        @raise Refused: as L{_caller}, and with a 404 for an account the
            caller may not use.
        """
        principal = await self._caller(request)
        number = await self._account_of(principal, account)
        if number is None:
            raise Refused(self._not_found(request, "No such account."))
        if self._server.blobs is None:
            raise Refused(self._no_blobs(request))
        return principal, number

    @app.handle_errors(HTTPException)
    def routing_error(self, request, failure):
        # No such route, or a method the route does not take.
        error = failure.value
        return problem(request, error.code, error.name, error.description)

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
        principal = await self._caller(request)
        return json_response(request, (await self._server.session(principal)).document)

    @app.route("/admin/cluster", methods=["GET"])
    async def admin_cluster(self, request):
        principal = await self._caller(request)
        if principal.name != ADMIN_NAME:
            return problem(request, 403, "Forbidden", "Only the admin may see the cluster.")
        if self._cluster is None:
            return self._not_found(request, "This node has no cluster view.")
        return json_response(request, self._cluster())

    @app.route("/jmap/eventsource", methods=["GET"])
    @app.route("/jmap/eventsource/", methods=["GET"])
    async def event_source(self, request):
        if self._server.bus is None:
            return self._unavailable(request)
        principal = await self._caller(request)
        try:
            options = parse_eventsource_query(request.args)
        except ValueError as error:
            return problem(request, 400, "Bad Request", str(error))
        accounts = await self._server.accounts(principal)
        stream = EventSourceStream(
            request,
            self._server.bus,
            accounts,
            options,
            throttle_ms=self._settings.event_source_throttle,
            clock=self._reactor,
        )
        try:
            # Held while the stream is open: a stream costs a connection
            # and a subscription for as long as the client keeps it.
            with self._event_streams.slot(principal.id):
                return await stream.start()
        except LimitReached:
            request.setHeader(b"Retry-After", b"30")
            return problem(
                request, 429, "Too Many Requests",
                f"{self._event_streams.limit} event streams of this user are already open.",
            )

    @app.route("/jmap", methods=["POST"])
    @app.route("/jmap/", methods=["POST"])
    async def api(self, request):
        principal = await self._caller(request)
        try:
            with self._requests.slot(principal.id):
                parsed = await self._parse(request)
                work = ensureDeferred(self._server.run(parsed, principal))
                # Work that finished at once has nothing left to protect.
                response = await (work if work.called else uncancellable(work))
        except RequestError as error:
            return jmap_problem(request, error)
        except LimitReached:
            return _busy(request, self._requests.limit, "requests", "maxConcurrentRequests")
        return json_response(request, response)

    async def _parse(self, request):
        content_type = (request.getHeader(b"Content-Type") or b"application/json").lower()
        if content_type.split(b";")[0].strip() != b"application/json":
            raise RequestError(NOT_JSON, "the request's Content-Type is not application/json")
        limit = self._settings.max_size_request
        size = check_body_size(request, limit, "request", "maxSizeRequest")
        arguments = (
            request.content, limit, self._server.capabilities(),
            self._settings.max_calls_in_request, self._settings.max_json_depth,
        )
        if size <= INLINE_PARSE_LIMIT or self._threadpool is None:
            return _read_and_parse(*arguments)
        # Twisted keeps a large body in a temporary file: read it there too.
        return await deferToThreadPool(
            self._reactor, self._threadpool, _read_and_parse, *arguments
        )

    async def _account_of(self, principal, text):
        # The principal id behind text, if principal may use that account.
        number = account_number(text)
        if number is None or number not in await self._server.accounts(principal):
            return None
        return number

    @app.route("/jmap/upload/<account>", methods=["POST"])
    @app.route("/jmap/upload/<account>/", methods=["POST"])
    async def upload(self, request, account):
        principal, number = await self._blob_caller(request, account)
        try:
            size = self._check_upload_size(request)
            work = ensureDeferred(self._store_upload(request, number, principal.id, size))
            blob_hash, size = await uncancellable(work)
        except RequestError as error:
            return jmap_problem(request, error)
        except LimitReached:
            return _busy(request, self._uploads.limit, "uploads", "maxConcurrentUpload")
        except OSError as error:
            if error.errno not in _DISK_FULL:
                raise
            # The operator's problem, not the client's: one line, no traceback.
            self.log.error(
                "upload to account {account} refused: {reason}",
                account=number, reason=os.strerror(error.errno),
            )
            return problem(
                request, 507, "Insufficient Storage",
                "The server has no room for this upload now; try again later.",
            )
        content_type = request.getHeader(b"Content-Type") or DEFAULT_BLOB_TYPE.encode()
        request.setResponseCode(201)
        return json_response(request, {
            "accountId": account_id(number),
            "blobId": blob_hash,
            "type": content_type.decode("latin-1").strip(),
            "size": size,
        })

    async def _store_upload(self, request, account, uploader, size):
        # Holds the account's upload slot until the blob is stored, even if
        # the client left before. The body is streamed into the blob store
        # from where Twisted spooled it, never whole in memory.
        with self._uploads.slot(account):
            return await self._server.blobs.upload(account, _body_source(request.content), uploader)

    def _check_upload_size(self, request):
        return check_body_size(request, self._settings.max_size_upload, "upload", "maxSizeUpload")

    @app.route("/jmap/download/<account>/<blob_id>/<filename:name>", methods=["GET"])
    async def download(self, request, account, blob_id, name):
        principal, number = await self._blob_caller(request, account)
        try:
            blob_file, size = await self._server.blobs.open_visible(number, principal.id, blob_id)
        except BlobMissing:
            return self._not_found(request, "No such blob in this account.")
        request.setHeader(b"Content-Type", _download_type(request).encode("ascii"))
        request.setHeader(b"Content-Disposition", _attachment(name).encode("ascii"))
        request.setHeader(b"Cache-Control", DOWNLOAD_CACHE)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Length", b"%d" % size)
        streamer = FileStreamer(blob_file, request, self._in_thread, size)
        complete = await streamer.start()
        # Klein finishes the response; after a cut, there is none to finish.
        return b"" if complete else None

    def _in_thread(self, function, *args):
        pool = self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, function, *args)
