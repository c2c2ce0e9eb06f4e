"""
The JMAP site over real loopback HTTP: CORS on every answer, preflights
without credentials, and request bodies bounded while they are read.
"""

import json
from base64 import b64encode

from treq import collect as treq_collect
from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.support import NodeServiceMixin

ADMIN = {b"Authorization": [b"Basic " + b64encode(b"admin:the-service-secret")]}
PAGE = b"https://webmail.example.net"


@implementer(IBodyProducer)
class ChunkedBody:
    """A body sent with chunked encoding: the server cannot know its size up front."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks):
        self._chunks = chunks

    def startProducing(self, consumer):
        for chunk in self._chunks:
            consumer.write(chunk)
        return defer.succeed(None)

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


class SiteTestCase(NodeServiceMixin, TestCase):
    settings_overrides = {}

    def setUp(self):
        return self.start_with_client(**self.settings_overrides)


class CorsTests(SiteTestCase):
    """
    A web page on another origin can call the server and read its answers.
    """

    @defer.inlineCallbacks
    def test_preflight_without_credentials(self):
        """OPTIONS on each JMAP path answers 204 with what a browser checks, no login asked."""
        for path in ("/.well-known/jmap", "/jmap", "/jmap/", "/jmap/upload/a1/",
                     "/jmap/download/a1/b/n", "/jmap/eventsource/"):
            response, _ = yield self.request("OPTIONS", path, headers={
                b"Origin": [PAGE],
                b"Access-Control-Request-Method": [b"POST"],
                b"Access-Control-Request-Headers": [b"authorization, content-type"],
            })
            self.assertEqual(response.code, 204, path)
            self.assertEqual(self.header(response, b"Access-Control-Allow-Origin"), b"*")
            allowed = self.header(response, b"Access-Control-Allow-Headers")
            self.assertIn(b"Authorization", allowed)
            self.assertIn(b"Content-Type", allowed)
            self.assertNotEqual(allowed.strip(), b"*")
            self.assertTrue(self.header(response, b"Access-Control-Max-Age"))
            self.assertIsNone(self.header(response, b"Location"))

    @defer.inlineCallbacks
    def test_no_cached_credentials_for_other_origins(self):
        """Permissive CORS never allows credentials, so cached Basic auth cannot be borrowed."""
        response, _ = yield self.request("GET", "/.well-known/jmap", headers={b"Origin": [PAGE]})
        self.assertIsNone(self.header(response, b"Access-Control-Allow-Credentials"))
        self.assertEqual(self.header(response, b"Access-Control-Allow-Origin"), b"*")

    @defer.inlineCallbacks
    def test_unknown_route_and_method(self):
        """An unknown path is a 404 and a wrong method a 405, as problem documents."""
        missing, body = yield self.request("GET", "/nope", headers=ADMIN)
        self.assertEqual(missing.code, 404)
        self.assertEqual(json.loads(body)["status"], 404)
        wrong, body = yield self.request("PUT", "/jmap/session", headers=ADMIN)
        self.assertEqual(wrong.code, 405)
        self.assertEqual(json.loads(body)["status"], 405)
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_headers_on_a_401(self):
        """A 401 carries CORS headers, so the page can read the challenge."""
        response, _ = yield self.request("GET", "/.well-known/jmap", headers={b"Origin": [PAGE]})
        self.assertEqual(response.code, 401)
        self.assertEqual(self.header(response, b"Access-Control-Allow-Origin"), b"*")
        self.assertIn(b"WWW-Authenticate", self.header(response, b"Access-Control-Expose-Headers"))

    @defer.inlineCallbacks
    def test_headers_on_success_and_problem(self):
        """Successful calls and request-level problems both carry CORS headers."""
        headers = {**ADMIN, b"Origin": [PAGE], b"Content-Type": [b"application/json"]}
        ok, _ = yield self.request("POST", "/jmap/", headers=headers,
                                   data=b'{"using": [], "methodCalls": []}')
        bad, _ = yield self.request("POST", "/jmap/", headers=headers, data=b"{")
        self.assertEqual((ok.code, bad.code), (200, 400))
        for response in (ok, bad):
            self.assertEqual(self.header(response, b"Access-Control-Allow-Origin"), b"*")


class StrictCorsTests(SiteTestCase):
    """
    With strict-cors, only the server's own origin may read answers.
    """

    settings_overrides = {"strict-cors": "true", "jmap-url": "https://mail.example.org"}

    @defer.inlineCallbacks
    def test_foreign_origin_refused(self):
        """Another origin gets no Access-Control-Allow-Origin."""
        response, _ = yield self.request("OPTIONS", "/jmap/", headers={b"Origin": [PAGE]})
        self.assertIsNone(self.header(response, b"Access-Control-Allow-Origin"))

    @defer.inlineCallbacks
    def test_own_origin_allowed(self):
        """The origin of jmap-url is allowed."""
        own = b"https://mail.example.org"
        response, _ = yield self.request("OPTIONS", "/jmap/", headers={b"Origin": [own]})
        self.assertEqual(self.header(response, b"Access-Control-Allow-Origin"), own)
        self.assertEqual(self.header(response, b"Access-Control-Allow-Credentials"), b"true")


class BodyLimitTests(SiteTestCase):
    """
    max-size-request holds whatever the client claims about the body's size.
    """

    settings_overrides = {"max-size-request": "5000", "max-size-upload": "6000"}

    @defer.inlineCallbacks
    def test_chunked_body_over_the_limit(self):
        """A chunked body larger than the limit is refused with limit/maxSizeRequest."""
        headers = {**ADMIN, b"Content-Type": [b"application/json"]}
        body = ChunkedBody([b'{"using": [], "methodCalls": [], "pad": "'] + [b"x" * 1000] * 20
                           + [b'"}'])
        response, content = yield self.request("POST", "/jmap/", headers=headers, data=body)
        self.assertEqual(response.code, 400)
        problem = json.loads(content)
        self.assertEqual(problem["limit"], "maxSizeRequest")

    @defer.inlineCallbacks
    def test_declared_length_over_the_limit(self):
        """A body whose Content-Length passes the limit is refused the same way."""
        headers = {**ADMIN, b"Content-Type": [b"application/json"]}
        payload = json.dumps({"using": [], "methodCalls": [], "pad": "x" * 8000}).encode()
        response, content = yield self.request("POST", "/jmap/", headers=headers, data=payload)
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads(content)["limit"], "maxSizeRequest")

    @defer.inlineCallbacks
    def test_hundred_megabytes(self):
        """100 MB sent to the API is refused with limit/maxSizeRequest; the node serves on."""
        headers = {**ADMIN, b"Content-Type": [b"application/json"]}
        megabyte = b"x" * (1024 * 1024)
        body = ChunkedBody([b'{"using": [], "methodCalls": [], "pad": "'] + [megabyte] * 100
                           + [b'"}'])
        response, content = yield self.request("POST", "/jmap/", headers=headers, data=body)
        self.assertEqual((response.code, json.loads(content)["limit"]), (400, "maxSizeRequest"))
        echo = json.dumps({"using": ["urn:ietf:params:jmap:core"],
                           "methodCalls": [["Core/echo", {}, "c"]]}).encode()
        response, _ = yield self.request("POST", "/jmap/", headers=headers, data=echo)
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_body_within_the_limit(self):
        """A chunked body under the limit is read whole and answered."""
        headers = {**ADMIN, b"Content-Type": [b"application/json"]}
        body = ChunkedBody([b'{"using": ["urn:ietf:params:jmap:core"], ',
                            b'"methodCalls": [["Core/echo", {"a": 1}, "c"]]}'])
        response, content = yield self.request("POST", "/jmap/", headers=headers, data=body)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(content)["methodResponses"], [["Core/echo", {"a": 1}, "c"]])


class EventSourceTests(SiteTestCase):
    """
    A client holding the event source hears of changes to its accounts.
    """

    @defer.inlineCallbacks
    def open_stream(self, query):
        response = yield self.http.get(self.base + "/jmap/eventsource/?" + query, headers={
            **ADMIN, b"Origin": [PAGE]})
        self.assertEqual(response.code, 200)
        chunks, opened = [], defer.Deferred()

        def received(chunk):
            chunks.append(chunk)
            if not opened.called:
                opened.callback(None)

        finished = treq_collect(response, received)
        yield opened
        return response, chunks, finished

    @defer.inlineCallbacks
    def test_state_event_after_a_change(self):
        """A committed change reaches the stream as a StateChange, then closeafter=state ends it."""
        from stalwart_tw.jmap.session import account_id
        from stalwart_tw.store.batch import WriteBatch

        admin = yield self.service.directory.get("admin")
        response, chunks, finished = yield self.open_stream("types=*&closeafter=state&ping=0")
        self.assertEqual(self.header(response, b"Content-Type"), b"text/event-stream")
        self.assertEqual(self.header(response, b"Access-Control-Allow-Origin"), b"*")
        result = yield self.service.node.commit(
            WriteBatch().log_change(admin.id, "Email", "m1", "created")
        )
        yield finished
        text = b"".join(chunks).decode()
        event = text[text.index("event: state"):]
        data = json.loads(event.split("data: ", 1)[1].split("\n", 1)[0])
        self.assertEqual(data["@type"], "StateChange")
        state = data["changed"][account_id(admin.id)]["Email"]
        self.assertEqual(state, format(result.modseqs[admin.id], "x"))

    @defer.inlineCallbacks
    def test_principal_change_announced_under_own_account(self):
        """A directory change reaches the stream as a Principal state of the user's account."""
        from stalwart_tw.jmap.session import account_id

        admin = yield self.service.directory.get("admin")
        response, chunks, finished = yield self.open_stream(
            "types=Principal&closeafter=state&ping=0")
        yield self.service.directory.create_principal("individual", "carol")
        yield finished
        text = b"".join(chunks).decode()
        data = json.loads(text[text.index("event: state"):].split("data: ", 1)[1].split("\n")[0])
        self.assertEqual(list(data["changed"]), [account_id(admin.id)])
        self.assertIn("Principal", data["changed"][account_id(admin.id)])

    @defer.inlineCallbacks
    def test_streams_per_user_capped(self):
        """Past the cap a user's next stream is a 429; closing one makes room."""
        from stalwart_tw.store.batch import WriteBatch

        self.service.http._event_streams.limit = 2
        admin = yield self.service.directory.get("admin")
        def change():
            return self.service.node.commit(
                WriteBatch().log_change(admin.id, "Email", "m", "created")
            )

        streams = []
        for _ in range(2):
            streams.append((yield self.open_stream("types=*&closeafter=state&ping=0"))[2])
        response, body = yield self.request("GET", "/jmap/eventsource/?ping=0", headers=ADMIN)
        self.assertEqual(response.code, 429)
        self.assertEqual(json.loads(body)["status"], 429)
        yield change()
        yield defer.gatherResults(streams)
        _, _, third = yield self.open_stream("types=*&closeafter=state&ping=0")
        yield change()
        yield third

    @defer.inlineCallbacks
    def test_bad_query(self):
        """A malformed closeafter is a 400 problem document, not a stream."""
        response, body = yield self.request(
            "GET", "/jmap/eventsource/?closeafter=maybe", headers=ADMIN)
        self.assertEqual(response.code, 400)
        self.assertIn(b"closeafter", body)

    @defer.inlineCallbacks
    def test_needs_credentials(self):
        """Without credentials the event source answers 401."""
        response, _ = yield self.request("GET", "/jmap/eventsource/")
        self.assertEqual(response.code, 401)


class UnauthenticatedBodyTests(TestCase):
    """
    A body sent without credentials is not stored: its answer is a 401.
    """

    def request(self, headers):
        from twisted.web.test.requesthelper import DummyChannel

        from stalwart_tw.http.app import JmapRequest

        channel = DummyChannel()
        channel.site.max_body = 10_000_000
        request = JmapRequest(channel)
        request.method = b"POST"
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name, [value])
        request.gotLength(1_000_000)
        for _ in range(10):
            request.handleContentChunk(b"x" * 100_000)
        return request

    def test_not_kept_without_credentials(self):
        """No Authorization (or a malformed one): not a byte is kept."""
        for headers in ({}, {b"Authorization": b"Basic !!!"}):
            request = self.request(headers)
            self.assertTrue(request.body_discarded)
            self.assertEqual(request.content.getvalue(), b"")
            self.assertEqual(request.body_size, 1_000_000)

    def test_kept_with_credentials(self):
        """With credentials to verify, the body is kept whole until they are."""
        request = self.request({b"Authorization": ADMIN[b"Authorization"][0]})
        self.assertFalse(request.body_discarded)
        request.content.seek(0)
        self.assertEqual(len(request.content.read()), 1_000_000)


class AdminClusterTests(SiteTestCase):
    """
    GET /admin/cluster: the node and its peers, for the admin only.
    """

    @defer.inlineCallbacks
    def test_admin_sees_the_node(self):
        """A node that runs alone shows itself (its id, no RPC address) and no peers."""
        response, body = yield self.request("GET", "/admin/cluster", headers=ADMIN)
        self.assertEqual(response.code, 200)
        described = json.loads(body)
        self.assertEqual(described["node"]["id"], self.service.identity.node_id)
        self.assertIsNone(described["node"]["rpc"])
        self.assertEqual(described["node"]["role"], "voter")
        self.assertEqual(described["peers"], [])

    @defer.inlineCallbacks
    def test_others_forbidden(self):
        """Anyone else gets 403; no credentials, 401."""
        yield self.service.directory.create_principal("individual", "jane", secret="jane-password")
        jane = {b"Authorization": [b"Basic " + b64encode(b"jane:jane-password")]}
        response, body = yield self.request("GET", "/admin/cluster", headers=jane)
        self.assertEqual((response.code, json.loads(body)["status"]), (403, 403))
        response, _ = yield self.request("GET", "/admin/cluster")
        self.assertEqual(response.code, 401)


@implementer(IHalfCloseableProtocol)
class HalfClosingClient(Protocol):
    """Sends its requests, closes its sending side, reads until the end."""

    def __init__(self, requests):
        self._requests = requests
        self.received = b""
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self._requests)
        self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.received += data

    def readConnectionLost(self):
        self.transport.loseConnection()

    def writeConnectionLost(self):
        # Its own sending side, closed on purpose in connectionMade.
        self.half_closed = True

    def connectionLost(self, reason):
        self.ended.callback(self.received)


class HalfCloseTests(SiteTestCase):
    """
    Over real loopback TCP: a client that half-closes after its requests.
    """

    @defer.inlineCallbacks
    def test_requests_answered_then_closed(self):
        """Two pipelined requests, then the half-close: both are answered, then the server closes."""
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        token = b64encode(b"admin:the-service-secret")
        one = b"GET /jmap/session HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic " + token
        client = HalfClosingClient(one + b"\r\n\r\n" + one + b"\r\n\r\n")
        port = self.service.ports["JMAP"].getHost().port
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        received = yield client.ended
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), 2)
