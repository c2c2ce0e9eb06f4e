"""
The connection-level defences of the JMAP site (http/channel.py), driven
over StringTransport with a task.Clock: the header deadline, the
connection caps, and bodies refused as soon as they are known too large.
"""

import json
from base64 import b64encode

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from stalwart_tw.config import load_settings
from stalwart_tw.http.app import JmapHttp, make_site
from stalwart_tw.jmap.core import CoreExtension
from stalwart_tw.jmap.server import JmapServer
from tests.test_service import FakeDirectory, Principal

JANE = b"Authorization: Basic " + b64encode(b"jane:jane-password") + b"\r\n"


class ChannelTestCase(TestCase):
    overrides = {}

    def setUp(self):
        self.clock = task.Clock()
        settings = load_settings(None, {
            "http-header-timeout": "10", "max-size-request": "1000", "max-size-upload": "1000",
            **self.overrides,
        }, {})
        directory = FakeDirectory({("jane", "jane-password"): Principal("jane", 12)})
        server = JmapServer(settings, directory, [CoreExtension()])
        http = JmapHttp(server, directory, settings, lambda: True, reactor=self.clock)
        self.site = make_site(http, settings, self.clock)

    def connect(self, host="192.0.2.1"):
        address = IPv4Address("TCP", host, 40000)
        protocol = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def status(self, transport):
        return transport.value().split(b"\r\n", 1)[0]


class HeaderDeadlineTests(ChannelTestCase):
    def test_slowloris_cut_off(self):
        """A header line every 5 s does not keep a connection: at 10 s it is a 408 and closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /jmap/session HTTP/1.1\r\nHost: mail.example\r\n")
        for number in range(1, 3):
            self.clock.advance(5)
            if transport.disconnecting:
                break
            protocol.dataReceived(b"X-Slow-%d: yes\r\n" % number)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.status(transport), b"HTTP/1.1 408 Request Timeout")
        self.assertIn(b"application/problem+json", transport.value())

    def test_deadline_again_after_each_answer(self):
        """Headers in time are served; on a kept-alive connection the next request has 10 s too."""
        protocol, transport = self.connect()
        self.clock.advance(9)
        protocol.dataReceived(b"GET /jmap/session HTTP/1.1\r\nHost: mail.example\r\n" + JANE + b"\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 200 OK")
        self.assertFalse(transport.disconnecting)
        transport.clear()
        self.clock.advance(5)
        protocol.dataReceived(b"GET /jmap/session HTTP/1.1\r\n")
        self.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.status(transport), b"HTTP/1.1 408 Request Timeout")

    def test_idle_connection_closed_silently(self):
        """A kept-alive connection with no request begun just closes at the deadline: no 408."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /jmap/session HTTP/1.1\r\nHost: mail.example\r\n" + JANE + b"\r\n")
        transport.clear()
        self.clock.advance(10.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_pipelined_request_in_progress_not_cut(self):
        """A pipelined request still being answered past the deadline is not cut off by it."""
        directory = self.site.check_login.__self__._directory
        real, pending = directory.authenticate, []

        def slow_second(login, password):
            if not pending:
                pending.append(None)
                return real(login, password)
            waiting = defer.Deferred()
            pending.append((waiting, real(login, password)))
            return waiting

        directory.authenticate = slow_second
        protocol, transport = self.connect()
        one = b"GET /jmap/session HTTP/1.1\r\nHost: mail.example\r\n" + JANE + b"\r\n"
        protocol.dataReceived(one + one)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 1)
        self.clock.advance(30)
        self.assertFalse(transport.disconnecting)
        self.assertNotIn(b"408", transport.value())
        waiting, outcome = pending[1]
        outcome.addCallback(waiting.callback)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)


class ConnectionCapTests(ChannelTestCase):
    overrides = {"max-connections": "3", "max-connections-per-address": "2"}

    def test_per_address(self):
        """A third connection from one address is a 503, closed; others still come in."""
        first, _ = self.connect()
        self.connect()
        _, refused = self.connect()
        self.assertEqual(self.status(refused), b"HTTP/1.1 503 Service Unavailable")
        self.assertTrue(refused.disconnecting)
        _, other = self.connect("192.0.2.2")
        self.assertFalse(other.disconnecting)
        first.connectionLost(None)
        _, again = self.connect()
        self.assertFalse(again.disconnecting)

    def test_total(self):
        """Past max-connections every new connection is refused, whatever its address."""
        for number in range(3):
            self.connect(f"192.0.2.{number}")
        _, refused = self.connect("198.51.100.1")
        self.assertEqual(self.status(refused), b"HTTP/1.1 503 Service Unavailable")
        self.assertEqual(self.site.connection_limits.open, 3)


class EarlyRefusalTests(ChannelTestCase):
    def test_expect_continue_over_the_limit(self):
        """Expect: 100-continue with a Content-Length over the limit: no 100, the limit problem, closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /jmap/ HTTP/1.1\r\nHost: mail.example\r\n" + JANE
            + b"Content-Type: application/json\r\nContent-Length: 5000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assertNotIn(b"100 Continue", transport.value())
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 4"))
        self.assertEqual(json.loads(body)["type"], "urn:ietf:params:jmap:error:limit")
        self.assertTrue(transport.disconnecting)

    def test_known_length_not_read(self):
        """A Content-Length over the limit is answered before any of the body is sent."""
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /jmap/ HTTP/1.1\r\nHost: mail.example\r\n" + JANE
            + b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        )
        self.assertIn(b"maxSizeRequest", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_chunked_refused_when_it_passes(self):
        """A chunked body is answered as soon as it passes the limit, its end never awaited."""
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /jmap/ HTTP/1.1\r\nHost: mail.example\r\n" + JANE
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"258\r\n" + b" " * 600 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"258\r\n" + b" " * 600 + b"\r\n")
        self.assertIn(b"urn:ietf:params:jmap:error:limit", transport.value())
        self.assertTrue(transport.disconnecting)
        # What else the client sends is not read as a request.
        transport.clear()
        protocol.dataReceived(b"258\r\n" + b" " * 600 + b"\r\n0\r\n\r\n")
        self.assertEqual(transport.value(), b"")


class PreciseAnswerTests(ChannelTestCase):
    def request(self, raw, host="192.0.2.1"):
        protocol, transport = self.connect(host)
        protocol.dataReceived(raw)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        return protocol, transport, head, body

    def test_host_header(self):
        """No Host on HTTP/1.1, two of them, or a malformed one: a 400 problem document."""
        for headers in (b"", b"Host: a.example\r\nHost: b.example\r\n", b"Host: a b\r\n",
                        b"Host: a.example:80:80\r\n"):
            _, transport, head, body = self.request(
                b"GET /jmap/session HTTP/1.1\r\n" + headers + JANE + b"\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 400"), headers)
            self.assertEqual(json.loads(body)["status"], 400)
            self.assertIn("Host", json.loads(body)["detail"])
        _, _, head, _ = self.request(b"GET /jmap/session HTTP/1.0\r\n" + JANE + b"\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.0 200"))

    def test_path_not_utf8(self):
        """A download path that is not UTF-8 is a 400 problem document, not an HTML page."""
        _, _, head, body = self.request(
            b"GET /jmap/download/a/b/%FF%FE HTTP/1.1\r\nHost: mail.example\r\n" + JANE + b"\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400"))
        self.assertIn(b"application/problem+json", head)
        self.assertIn("UTF-8", json.loads(body)["detail"])

    def test_broken_framing(self):
        """Twisted's own refusals of broken framing are problem documents, with CORS headers."""
        for framing in (b"Content-Length: 5\r\nContent-Length: 6\r\n",
                        b"Content-Length: -1\r\n",
                        b"Content-Type: text/pl\x00ain\r\nContent-Length: 2\r\n",
                        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"):
            _, transport, head, body = self.request(
                b"POST /jmap/ HTTP/1.1\r\nHost: mail.example\r\nOrigin: https://app.example\r\n"
                + framing + b"\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 400"), framing)
            self.assertIn(b"Access-Control-Allow-Origin: *", head)
            self.assertEqual(json.loads(body)["status"], 400)
            self.assertTrue(transport.disconnecting)

    def test_half_close_after_a_request(self):
        """A client that stops sending after its request still gets the answer, then the close."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /jmap/session HTTP/1.1\r\nHost: mail.example\r\n" + JANE + b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200"))
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_half_close_mid_request(self):
        """A request cut short by the half-close is never answered: the connection closes."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /jmap/session HTTP/1.1\r\nHost: mail.")
        protocol.readConnectionLost()
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)


class LoginBeforeBodyTests(ChannelTestCase):
    """
    Credentials not verified moments ago are checked before the body is read.
    """

    def setUp(self):
        super().setUp()
        self.pending = []
        directory = self.site.check_login.__self__._directory
        real = directory.authenticate

        def later(login, password):
            waiting = defer.Deferred()
            self.pending.append((waiting, real(login, password)))
            return waiting

        directory.authenticate = later

    def finish_checks(self):
        while self.pending:
            waiting, outcome = self.pending.pop(0)
            outcome.addCallback(waiting.callback)

    def post(self, credentials, body):
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /jmap/ HTTP/1.1\r\nHost: mail.example\r\n" + credentials
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        return protocol, transport

    def test_body_waits_for_the_login(self):
        """Until the password is checked nothing of the body is kept and the reading is paused."""
        body = json.dumps({"using": ["urn:ietf:params:jmap:core"],
                           "methodCalls": [["Core/echo", {"a": 1}, "c"]]}).encode()
        protocol, transport = self.post(JANE, body)
        request = protocol.requests[-1]
        self.assertEqual(request.body_size, 0)
        self.assertEqual(transport.producerState, "paused")
        self.finish_checks()
        self.assertEqual(request.body_size, len(body))
        self.assertIn(b'"methodResponses":[["Core/echo",{"a":1},"c"]]', transport.value())

    def test_continue_only_after_the_login(self):
        """Expect: 100-continue is answered only once the credentials have passed; never for a wrong one."""
        def expecting(credentials):
            protocol, transport = self.connect()
            protocol.dataReceived(
                b"POST /jmap/ HTTP/1.1\r\nHost: mail.example\r\n" + credentials
                + b"Content-Type: application/json\r\nContent-Length: 10\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            return transport

        transport = expecting(JANE)
        self.assertEqual(transport.value(), b"")
        self.finish_checks()
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        wrong = b"Authorization: Basic " + b64encode(b"jane:not-her-password") + b"\r\n"
        transport = expecting(wrong)
        self.finish_checks()
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401"))

    def test_no_credentials_body_refused_at_the_headers(self):
        """A body sent with no credentials is answered 401 at its headers, unread, even past the limit."""
        protocol, transport = self.post(b"", b"")
        protocol.dataReceived(b"")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401"))
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /jmap/ HTTP/1.1\r\nHost: mail.example\r\nContent-Length: 5000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assertNotIn(b"100 Continue", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_throttled_before_the_body(self):
        """Past the failed-login limit, a body's login is refused 429 at its headers, the body unread."""
        from stalwart_tw.http.app import THROTTLE_DELAY

        wrong = b"Authorization: Basic " + b64encode(b"jane:not-her-password") + b"\r\n"
        for _ in range(10):
            self.post(wrong, b"{}")
            self.finish_checks()
        protocol, transport = self.post(JANE, b"x" * 500)
        request = protocol.requests[-1]
        self.clock.advance(THROTTLE_DELAY)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 429"), transport.value()[:40])
        self.assertEqual(request.body_size, 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_bad_login_body_never_read(self):
        """A wrong password: a 401 with nothing of the body read, and the connection closes."""
        wrong = b"Authorization: Basic " + b64encode(b"jane:not-her-password") + b"\r\n"
        protocol, transport = self.post(wrong, b"x" * 900)
        request = protocol.requests[-1]
        self.finish_checks()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401"))
        self.assertEqual(request.body_size, 0)
        self.assertTrue(transport.disconnecting)


class DescriptorLimitTests(TestCase):
    def test_cap_under_the_descriptor_limit(self):
        """The default cap is the descriptor limit less a reserve, the soft limit raised first."""
        from stalwart_tw.http import channel

        raised = []
        self.patch(channel.resource, "getrlimit", lambda kind: (1024, 4096))
        self.patch(channel.resource, "setrlimit", lambda kind, limits: raised.append(limits))
        self.assertEqual(channel.default_max_connections(), 4096 - channel.DESCRIPTOR_RESERVE)
        self.assertEqual(raised, [(4096, 4096)])

        def refused(kind, limits):
            raise ValueError("not allowed")

        self.patch(channel.resource, "setrlimit", refused)
        self.assertEqual(channel.default_max_connections(), 1024 - channel.DESCRIPTOR_RESERVE)


class BehindProxyCapTests(ChannelTestCase):
    overrides = {"max-connections": "3", "max-connections-per-address": "1",
                 "use-forwarded-header": "true"}

    def test_only_the_total_counts(self):
        """Behind a proxy every client comes from its address: only the total cap applies."""
        for _ in range(3):
            _, transport = self.connect("10.1.1.1")
            self.assertFalse(transport.disconnecting)
        _, refused = self.connect("10.1.1.1")
        self.assertEqual(self.status(refused), b"HTTP/1.1 503 Service Unavailable")
