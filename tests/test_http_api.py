"""
The Session resource and the API endpoint over HTTP (through Klein, with
StubTreq): authentication, request-level problems, and Core/echo.
"""

import json
from base64 import b64encode

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.config import load_settings
from stalwart_tw.http.app import JmapHttp
from stalwart_tw.jmap.core import CoreExtension
from stalwart_tw.jmap.server import JmapServer
from stalwart_tw.jmap.ids import decode_id, encode_id
from stalwart_tw.jmap.session import account_id
from tests.test_service import FakeDirectory, Principal

CORE = "urn:ietf:params:jmap:core"
JANE = {b"Authorization": [b"Basic " + b64encode(b"jane:secret")]}


class ApiTestCase(TestCase):
    def setUp(self):
        self.directory = FakeDirectory({("jane", "secret"): Principal("jane", 12, "jane@x.org")})
        settings = load_settings(
            None, {"jmap-url": "https://mail.example.org", "max-size-request": "2000"}, {}
        )
        self.server = JmapServer(settings, self.directory, [CoreExtension()])
        self.http = JmapHttp(self.server, self.directory, settings, lambda: True)
        self.treq = StubTreq(self.http.resource())

    @defer.inlineCallbacks
    def post(self, payload, headers=JANE, content_type=b"application/json"):
        headers = dict(headers)
        if content_type is not None:
            headers[b"Content-Type"] = [content_type]
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response = yield self.treq.post("http://127.0.0.1/jmap/", data=data, headers=headers)
        document = json.loads((yield response.content()))
        return response, document


class SessionTests(ApiTestCase):
    """
    The Session resource a client reads first.
    """

    @defer.inlineCallbacks
    def get_session(self, path="/.well-known/jmap"):
        response = yield self.treq.get("http://127.0.0.1" + path, headers=JANE)
        self.assertEqual(response.code, 200)
        return json.loads((yield response.content()))

    @defer.inlineCallbacks
    def test_core_capability_carries_limits(self):
        """The core capability lists every limit, from the settings."""
        session = yield self.get_session()
        core = session["capabilities"][CORE]
        self.assertEqual(core["maxSizeRequest"], 2000)
        self.assertEqual(core["maxCallsInRequest"], 16)
        for limit in ("maxSizeUpload", "maxConcurrentUpload", "maxConcurrentRequests",
                      "maxObjectsInGet", "maxObjectsInSet", "collationAlgorithms"):
            self.assertIn(limit, core)

    @defer.inlineCallbacks
    def test_urls_are_absolute(self):
        """Every URL in the Session is absolute, built from jmap-url."""
        session = yield self.get_session()
        for name in ("apiUrl", "downloadUrl", "uploadUrl", "eventSourceUrl"):
            self.assertTrue(session[name].startswith("https://mail.example.org/jmap/"), name)
        self.assertIn("{accountId}", session["uploadUrl"])
        # The URL templates carry exactly the RFC's variables, single-braced.
        base = "https://mail.example.org/jmap/"
        self.assertEqual(session["uploadUrl"], base + "upload/{accountId}/")
        self.assertEqual(
            session["downloadUrl"], base + "download/{accountId}/{blobId}/{name}?accept={type}"
        )
        self.assertEqual(
            session["eventSourceUrl"],
            base + "eventsource/?types={types}&closeafter={closeafter}&ping={ping}",
        )

    @defer.inlineCallbacks
    def test_own_account_and_stable_state(self):
        """The user's own account is listed, and the state is the same on each read."""
        session = yield self.get_session()
        self.assertEqual(session["username"], "jane")
        self.assertEqual(list(session["accounts"]), [account_id(12)])
        self.assertTrue(session["accounts"][account_id(12)]["isPersonal"])
        again = yield self.get_session("/jmap/session")
        self.assertEqual(again["state"], session["state"])


class ApiTests(ApiTestCase):
    """
    POST /jmap/: authentication, request-level problems, methods.
    """

    @defer.inlineCallbacks
    def test_echo(self):
        """Core/echo answers with its arguments and the session state."""
        response, document = yield self.post(
            {"using": [CORE], "methodCalls": [["Core/echo", {"hello": True}, "c1"]]}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(document["methodResponses"], [["Core/echo", {"hello": True}, "c1"]])
        self.assertTrue(document["sessionState"])

    def nested(self, levels, inner=True):
        # A request whose body nests exactly `levels` deep: the request
        # object, methodCalls, the invocation, then the arguments.
        value = inner
        for _ in range(levels - 4):
            value = [value]
        return {"using": [CORE], "methodCalls": [["Core/echo", {"deep": value}, "c"]]}

    @defer.inlineCallbacks
    def test_nesting_limit(self):
        """A body at max-json-depth is served; one level more is notJSON naming the limit."""
        response, document = yield self.post(self.nested(64))
        self.assertEqual(response.code, 200)
        self.assertEqual(document["methodResponses"][0][0], "Core/echo")
        response, document = yield self.post(self.nested(65))
        self.assertEqual(response.code, 400)
        self.assertEqual(document["type"], "urn:ietf:params:jmap:error:notJSON")
        self.assertIn("at most 64", document["detail"])

    @defer.inlineCallbacks
    def test_hostile_nesting_logs_nothing(self):
        """Hundreds of levels, with an escape inside: a 400, and no traceback in the log."""
        for levels in (254, 600, 900):
            raw = json.dumps(self.nested(levels, "caf\u00e9")).encode()
            self.assertLess(len(raw), 2000)
            response, document = yield self.post(raw)
            self.assertEqual(response.code, 400)
            self.assertIn("nests", document["detail"])
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_needs_credentials(self):
        """Without credentials the API answers 401 with the Basic challenge."""
        response, document = yield self.post({"using": [], "methodCalls": []}, headers={})
        self.assertEqual(response.code, 401)
        self.assertIn(b"Basic", response.headers.getRawHeaders(b"WWW-Authenticate")[0])

    @defer.inlineCallbacks
    def test_wrong_content_type(self):
        """A body that is not application/json is notJSON."""
        response, document = yield self.post(b"using=x", content_type=b"text/plain")
        self.assertEqual(response.code, 400)
        self.assertEqual(document["type"], "urn:ietf:params:jmap:error:notJSON")

    @defer.inlineCallbacks
    def test_json_with_charset(self):
        """application/json with a charset parameter is accepted."""
        response, _ = yield self.post(
            {"using": [], "methodCalls": []}, content_type=b"application/json; charset=utf-8"
        )
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_truncated_json(self):
        """Truncated JSON is a notJSON problem document."""
        response, document = yield self.post(b'{"using": ["urn:ietf:para')
        self.assertEqual(response.code, 400)
        self.assertEqual(document["type"], "urn:ietf:params:jmap:error:notJSON")
        self.assertIn(b"application/problem+json",
                      response.headers.getRawHeaders(b"Content-Type")[0])

    @defer.inlineCallbacks
    def test_request_too_large(self):
        """A body over max-size-request is a limit problem naming maxSizeRequest."""
        calls = [["Core/echo", {"padding": "x" * 100}, str(n)] for n in range(15)]
        response, document = yield self.post({"using": [CORE], "methodCalls": calls})
        self.assertEqual(response.code, 400)
        self.assertEqual(document["type"], "urn:ietf:params:jmap:error:limit")
        self.assertEqual(document["limit"], "maxSizeRequest")

    @defer.inlineCallbacks
    def test_unknown_capability(self):
        """An unsupported capability in using is unknownCapability."""
        response, document = yield self.post({"using": ["urn:x"], "methodCalls": []})
        self.assertEqual(document["type"], "urn:ietf:params:jmap:error:unknownCapability")


class IdTests(TestCase):
    """
    Ids are short URL-safe strings that decode back, and garbage is refused.
    """

    def test_round_trip(self):
        """Encoded ids decode to their number."""
        for number in (0, 1, 31, 32, 12345, 2**63 - 1):
            text = encode_id("a", number)
            self.assertRegex(text, r"^a[0-9a-z]+$")
            self.assertEqual(decode_id("a", text), number)

    def test_garbage(self):
        """Strings that are not ids of that kind decode to None."""
        for text in ("", "a", "b1", "a00", "aI", "a-1", None, 5, "a" + "z" * 20):
            self.assertIsNone(decode_id("a", text))


class ConcurrencyTests(ApiTestCase):
    """
    maxConcurrentRequests holds per account.
    """

    @defer.inlineCallbacks
    def test_limit_per_account(self):
        """A request beyond the account's limit gets limit/maxConcurrentRequests; others go on."""
        gates = []

        def wait(context, arguments):
            gates.append(defer.Deferred())
            return gates[-1].addCallback(lambda _: arguments)

        self.server.methods.register("Test/wait", CORE, wait)
        waiting = [
            self.post({"using": [CORE], "methodCalls": [["Test/wait", {"n": n}, "c"]]})
            for n in range(4)
        ]
        self.assertEqual(len(gates), 4)
        response, document = yield self.post({"using": [CORE], "methodCalls": []})
        self.assertEqual(response.code, 429)
        self.assertEqual(document["type"], "urn:ietf:params:jmap:error:limit")
        self.assertEqual(document["limit"], "maxConcurrentRequests")
        for gate in gates:
            gate.callback(None)
        self.treq.flush()
        results = yield defer.gatherResults(waiting)
        self.assertEqual([r[0].code for r in results], [200] * 4)
        # The slots are back: the next request runs.
        response, _ = yield self.post({"using": [CORE], "methodCalls": []})
        self.assertEqual(response.code, 200)
