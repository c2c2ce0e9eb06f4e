"""
Rate limits: the counting itself, the client address rule, and the three
limits as a client meets them over the API (StubTreq, task.Clock).
"""

import json
from base64 import b64encode

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from stalwart_tw.auth.ratelimit import FailedLogins, RateLimit, client_address
from stalwart_tw.config import load_settings
from stalwart_tw.http.app import THROTTLE_DELAY, JmapHttp
from stalwart_tw.jmap.core import CoreExtension
from stalwart_tw.jmap.server import JmapServer
from stalwart_tw.logs import Logger
from stalwart_tw.setting_kinds import Rate
from tests.test_service import FakeDirectory, Principal


def basic(login, password):
    return {b"Authorization": [b"Basic " + b64encode(f"{login}:{password}".encode())]}


def forwarded_from(address):
    return {b"X-Forwarded-For": [f"203.0.113.7, {address}".encode()]}


class RateLimitTests(TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.limit = RateLimit(Rate(3, 60), self.clock)

    def test_count_then_wait(self):
        """Three events pass; the fourth waits until the window is over, then passes."""
        self.assertEqual([self.limit.take("k") for _ in range(3)], [None, None, None])
        self.clock.advance(20)
        self.assertEqual(self.limit.take("k"), 40)
        self.assertEqual(self.limit.retry_after("other"), None)
        self.clock.advance(40)
        self.assertIsNone(self.limit.take("k"))

    def test_refused_events_not_counted(self):
        """A refused take counts nothing: waiting out the window is enough."""
        for _ in range(10):
            self.limit.take("k")
        self.clock.advance(60)
        self.assertEqual([self.limit.take("k") for _ in range(3)], [None, None, None])

    def test_bounded_table(self):
        """A flood of keys never grows the table past its bound."""
        limit = RateLimit(Rate(1, 60), self.clock, max_keys=100)
        for number in range(1000):
            limit.hit(f"10.0.{number // 256}.{number % 256}")
        self.assertLessEqual(len(limit._windows), 100)
        # The latest keys are the ones kept.
        self.assertIsNotNone(limit.retry_after("10.0.3.231"))


class FailedLoginsTests(TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.failures = FailedLogins(Rate(3, 60), self.clock, Logger(), "JMAP")

    def test_per_address_and_per_login(self):
        """Failures count by address and by login name (any case); either limit refuses."""
        for _ in range(3):
            self.failures.failed("192.0.2.1", "jane")
        self.assertIsNotNone(self.failures.retry_after("192.0.2.1", "bob"))
        self.assertIsNotNone(self.failures.retry_after("192.0.2.99", "JANE"))
        self.assertIsNone(self.failures.retry_after("192.0.2.99", "bob"))

    def test_busy_counts_against_the_address(self):
        """Logins refused for a full hash pool count against their address only."""
        for _ in range(3):
            self.failures.busy("192.0.2.1")
        self.assertIsNotNone(self.failures.retry_after("192.0.2.1", "jane"))
        self.assertIsNone(self.failures.retry_after("192.0.2.2", "jane"))

    def test_one_line_per_address_per_window(self):
        """One log line per address a window, telling how many more failed; no password."""
        with capturedLogs() as events:
            for _ in range(5):
                self.failures.failed("192.0.2.1", "jane")
            self.failures.failed("192.0.2.2", "jane")
            self.clock.advance(60)
            self.failures.failed("192.0.2.1", "jane")
        lines = [event for event in events if "failed login" in event["log_format"]]
        self.assertEqual([line["address"] for line in lines],
                         ["192.0.2.1", "192.0.2.2", "192.0.2.1"])
        self.assertIn("4 more", lines[2]["more"])


class ClientAddressTests(TestCase):
    def request(self, headers=()):
        request = DummyRequest([b""])
        request.client = IPv4Address("TCP", "198.51.100.5", 4321)
        for name, value in headers:
            request.requestHeaders.addRawHeader(name, value)
        return request

    def test_peer_by_default(self):
        """Without use-forwarded-header the peer counts, whatever the headers say."""
        request = self.request([(b"X-Forwarded-For", b"192.0.2.1")])
        self.assertEqual(client_address(request, False), "198.51.100.5")

    def test_right_most_forwarded(self):
        """With it, the right-most address of the last header: the one our proxy added."""
        request = self.request([
            (b"X-Forwarded-For", b"10.9.9.9"),
            (b"X-Forwarded-For", b"192.0.2.1, 203.0.113.8"),
        ])
        self.assertEqual(client_address(request, True), "203.0.113.8")
        request = self.request([(b"Forwarded", b'for=192.0.2.1, for="[2001:db8::1]:443"')])
        self.assertEqual(client_address(request, True), "2001:db8::1")
        self.assertEqual(client_address(self.request(), True), "198.51.100.5")

    def test_forwarded_before_x_forwarded_for(self):
        """Forwarded wins over a client's own X-Forwarded-For; ports go; junk counts as the peer."""
        request = self.request([(b"X-Forwarded-For", b"192.0.2.66"),
                                (b"Forwarded", b"for=203.0.113.9:4711")])
        self.assertEqual(client_address(request, True), "203.0.113.9")
        request = self.request([(b"X-Forwarded-For", b"192.0.2.1, 203.0.113.8:8080")])
        self.assertEqual(client_address(request, True), "203.0.113.8")
        for junk in (b"unknown", b"_hidden", b"a.b.c.d, <script>"):
            request = self.request([(b"X-Forwarded-For", junk)])
            self.assertEqual(client_address(request, True), "198.51.100.5", junk)

    def test_table_kept_cheap_when_full(self):
        """A full table makes room a tenth at a time, so new keys do not each rebuild it."""
        limit = RateLimit(Rate(5, 60), task.Clock(), max_keys=1000)
        rebuilds = []
        real = limit._make_room
        limit._make_room = lambda: rebuilds.append(1) or real()
        for number in range(5000):
            limit.hit(f"key-{number}")
        self.assertLessEqual(len(rebuilds), 50)


class ApiRateLimitTests(TestCase):
    """
    The three limits over the API, with addresses from X-Forwarded-For.
    """

    def setUp(self):
        self.directory = FakeDirectory({("jane", "jane-password"): Principal("jane", 12)})
        self.clock = task.Clock()
        settings = load_settings(None, {
            "use-forwarded-header": "true", "rate-limit-auth": "3/60",
            "rate-limit-anonymous": "4/60", "rate-limit-authenticated": "5/60",
        }, {})
        server = JmapServer(settings, self.directory, [CoreExtension()])
        self.http = JmapHttp(server, self.directory, settings, lambda: True, clock=self.clock)
        self.treq = StubTreq(self.http.resource())

    @defer.inlineCallbacks
    def session(self, address, headers=None):
        answer = self.treq.get(
            "http://127.0.0.1/jmap/session", headers={**forwarded_from(address), **(headers or {})}
        )
        # A 429 comes after THROTTLE_DELAY; any other answer at once.
        self.clock.advance(THROTTLE_DELAY)
        self.treq.flush()
        response = yield answer
        body = yield response.content()
        retry = response.headers.getRawHeaders(b"Retry-After")
        if retry is not None:
            self.assertTrue(0 < int(retry[0]) <= 60, retry)
            retry = "set"
        return response.code, retry, body

    @defer.inlineCallbacks
    def test_failed_logins_throttled_before_hashing(self):
        """After 3 failures an address is refused 429, the right password too, with no password check."""
        for _ in range(3):
            code, _, _ = yield self.session("192.0.2.1", basic("jane", "guess"))
            self.assertEqual(code, 401)
        attempts = len(self.directory.attempts)
        code, retry, body = yield self.session("192.0.2.1", basic("jane", "jane-password"))
        self.assertEqual((code, retry), (429, "set"))
        self.assertEqual(json.loads(body)["status"], 429)
        self.assertEqual(len(self.directory.attempts), attempts)
        self.clock.advance(60)
        code, _, _ = yield self.session("192.0.2.1", basic("jane", "jane-password"))
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_throttled_answer_waits(self):
        """A 429 is answered only after THROTTLE_DELAY, so a client past a limit cannot spin."""
        for _ in range(4):
            yield self.session("192.0.2.1")
        got = []
        answer = self.treq.get("http://127.0.0.1/jmap/session", headers=forwarded_from("192.0.2.1"))
        answer.addCallback(got.append)
        self.treq.flush()
        self.assertEqual(got, [])
        self.clock.advance(THROTTLE_DELAY)
        self.treq.flush()
        self.assertEqual(got[0].code, 429)

    @defer.inlineCallbacks
    def test_botnet_on_one_login(self):
        """Guesses at one login from many addresses are throttled by the login."""
        for number in range(3):
            yield self.session(f"192.0.2.{number}", basic("jane", f"guess{number}"))
        code, _, _ = yield self.session("198.51.100.9", basic("jane", "another"))
        self.assertEqual(code, 429)
        code, _, _ = yield self.session("198.51.100.9", basic("bob", "bobs-guess"))
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_successes_do_not_count(self):
        """Right passwords never use up the failure limit."""
        for _ in range(5):
            code, _, _ = yield self.session("192.0.2.1", basic("jane", "jane-password"))
            self.assertEqual(code, 200)
        code, _, _ = yield self.session("192.0.2.1", basic("jane", "guess"))
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_anonymous_requests_per_address(self):
        """Requests without credentials are counted by address: 4 challenges, then 429."""
        for _ in range(4):
            code, _, _ = yield self.session("192.0.2.1")
            self.assertEqual(code, 401)
        code, retry, _ = yield self.session("192.0.2.1")
        self.assertEqual((code, retry), (429, "set"))
        code, _, _ = yield self.session("192.0.2.2")
        self.assertEqual(code, 401)

    @defer.inlineCallbacks
    def test_authenticated_requests_per_account(self):
        """An account may make 5 requests a minute here, from any address; the sixth is 429."""
        for number in range(5):
            code, _, _ = yield self.session(f"192.0.2.{number}", basic("jane", "jane-password"))
            self.assertEqual(code, 200)
        code, retry, _ = yield self.session("192.0.2.77", basic("jane", "jane-password"))
        self.assertEqual((code, retry), (429, "set"))
