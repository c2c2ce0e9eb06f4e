"""
The node's service in this process: start-up checks, the web server over
plain and TLS connections, Basic authentication, and a shutdown that loses
no write.
"""

import json
import os
from base64 import b64encode

import trustme
from treq.testing import StubTreq
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from stalwart_tw.auth.basic import parse_basic
from stalwart_tw.config import SETTINGS, load_settings
from stalwart_tw.http.app import JmapHttp
from stalwart_tw.jmap.core import CoreExtension
from stalwart_tw.jmap.server import JmapServer
from stalwart_tw.service import NodeService, Options, StartupError, tls_options
from tests.support import NodeServiceMixin, cheap_hasher, node_settings


def basic(login, password):
    token = b64encode(f"{login}:{password}".encode())
    return {b"Authorization": [b"Basic " + token]}


@implementer(IPolicyForHTTPS)
class TrustOneAuthority:
    """Client TLS policy that trusts the test's certificate authority."""

    def __init__(self, authority):
        self._authority = authority

    def creatorForNetloc(self, hostname, port):
        return optionsForClientTLS(
            hostname.decode("ascii"), trustRoot=self._authority
        )


class NodeServiceTests(NodeServiceMixin, TestCase):
    """
    A node started in this process answers over HTTP(S) and stops cleanly.
    """

    @defer.inlineCallbacks
    def test_https_when_certificate_set(self):
        """With jmap-cert-path and jmap-key-path the node speaks HTTPS."""
        authority = trustme.CA()
        certificate = authority.issue_cert("127.0.0.1", "localhost")
        folder = self.mktemp()
        os.makedirs(folder)
        cert_path = os.path.join(folder, "cert.pem")
        key_path = os.path.join(folder, "key.pem")
        certificate.cert_chain_pems[0].write_to_path(cert_path)
        certificate.private_key_pem.write_to_path(key_path)
        service = yield self.start(
            node_settings(self, **{"jmap-cert-path": cert_path, "jmap-key-path": key_path})
        )
        port = service.ports["JMAP"].getHost().port
        trust = TrustOneAuthority(Certificate.loadPEM(authority.cert_pem.bytes()))
        response = yield self.client(trust).get(
            f"https://localhost:{port}/.well-known/jmap",
            headers=basic("admin", "the-service-secret"),
        )
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.json())["username"], "admin")

    @defer.inlineCallbacks
    def test_stop_finishes_writes_in_flight(self):
        """Writes handed to the node before stop are all on disk after it."""
        settings = node_settings(self)
        service = yield self.start(settings)
        creating = [
            service.directory.create_principal("domain", f"d{number}.example.org")
            for number in range(20)
        ]
        yield service.stopService()
        results = yield defer.DeferredList(creating, consumeErrors=True)
        self.assertTrue(all(success for success, _ in results))

        again = yield self.start(settings)
        domains = yield again.directory.list(kind="domain")
        self.assertEqual(len(domains), 20)
        yield again.stopService()

    @defer.inlineCallbacks
    def test_admin_created_once(self):
        """A restart finds the admin created at first start and writes nothing."""
        settings = node_settings(self)
        service = yield self.start(settings)
        first = yield service.directory.get("admin")
        yield service.stopService()
        service = yield self.start(settings)
        again = yield service.directory.get("admin")
        self.assertEqual((again.id, again.created_at), (first.id, first.created_at))
        self.assertEqual(service.node.applied_index, 1)
        yield service.stopService()

    @defer.inlineCallbacks
    def test_admin_secret_reset_through_settings(self):
        """A new admin-secret in the settings replaces the stored password."""
        settings = node_settings(self)
        service = yield self.start(settings)
        yield service.stopService()
        service = yield self.start(settings.replace(admin_secret="a-new-admin-secret"))
        self.assertIsNone((yield service.directory.authenticate("admin", "the-service-secret")))
        admin = yield service.directory.authenticate("admin", "a-new-admin-secret")
        self.assertEqual(admin.name, "admin")
        yield service.stopService()

    def test_short_encryption_key_file(self):
        """A truncated encryption key file is refused at start-up, never used."""
        settings = node_settings(self)
        os.makedirs(settings.db_path)
        with open(os.path.join(settings.db_path, "encryption.key"), "w") as key_file:
            key_file.write("")
        service = NodeService(settings)
        error = self.assertRaises(StartupError, service._prepare_data_folder)
        self.assertIn("encryption key", str(error))

    def test_encryption_key_generated_once(self):
        """The generated key is kept, private to the owner, and read back the same."""
        settings = node_settings(self)
        first = NodeService(settings)
        first._prepare_data_folder()
        path = os.path.join(settings.db_path, "encryption.key")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        second = NodeService(settings)
        second._prepare_data_folder()
        self.assertEqual(first.encryption_key, second.encryption_key)
        self.assertGreaterEqual(len(first.encryption_key), 32)

    @defer.inlineCallbacks
    def test_status(self):
        """The status the admin shell shows names the data path and the applied index."""
        settings = node_settings(self)
        service = yield self.start(settings)
        status = yield service.status()
        self.assertEqual(status["data path"], settings.db_path)
        self.assertEqual(status["applied index"], 1)
        self.assertGreater(status["database bytes"], 0)
        yield service.stopService()

    @defer.inlineCallbacks
    def test_failed_start_closes_the_ports(self):
        """A part that fails to start: the parts begun are stopped in reverse, every port closes."""
        service = NodeService(node_settings(self))
        service.directory._hasher = cheap_hasher()
        service.directory.ensure_admin = lambda secret=None: defer.fail(RuntimeError("no admin"))
        failures = []
        # The real one stops the reactor, which is trial's here.
        service._start_failed = failures.append
        stops = []
        for part in service:
            original = part.stopService
            part.stopService = lambda name=part.name, original=original: (
                stops.append(name), original())[1]
        service.privilegedStartService()
        port = service.ports["JMAP"].getHost().port
        service.startService()
        yield service.opened
        self.assertEqual(failures[0].getErrorMessage(), "no admin")
        self.assertFalse(service.ready)
        yield service.stopService()
        self.assertEqual(stops, ["admin", "blobs", "node", "store", "processes", "hashers", "workers"])
        self.assertEqual(service.ports, {})
        probe = yield self.assertFailure(
            self.client().get(f"http://127.0.0.1:{port}/jmap/session"), ConnectionRefusedError)
        self.assertIsInstance(probe, ConnectionRefusedError)

    def test_unwritable_data_folder(self):
        """A db-path that cannot be created stops start-up with one line."""
        blocker = self.mktemp()
        with open(blocker, "w") as file:
            file.write("not a folder")
        service = NodeService(node_settings(self, **{"db-path": os.path.join(blocker, "data")}))
        error = self.assertRaises(StartupError, service._prepare_data_folder)
        self.assertIn("cannot create db-path", str(error))
        self.assertNotIn("\n", str(error))

    def test_port_in_use_is_startup_error(self):
        """Binding a port that is taken raises a one-line StartupError."""
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        service = NodeService(node_settings(self, **{"jmap-port": str(taken.getHost().port)}))
        error = self.assertRaises(StartupError, service._listen)
        self.assertIn(f"cannot listen for JMAP on 127.0.0.1 port {taken.getHost().port}", str(error))

    def test_missing_certificate(self):
        """A certificate file that does not exist is named in one line."""
        error = self.assertRaises(StartupError, tls_options, "/nonexistent.pem", "/nope.key")
        self.assertIn("/nonexistent.pem", str(error))

    def test_key_not_matching_certificate(self):
        """A key that does not belong to the certificate is refused at start-up."""
        authority = trustme.CA()
        first, second = authority.issue_cert("a.example"), authority.issue_cert("b.example")
        folder = self.mktemp()
        os.makedirs(folder)
        cert_path, key_path = os.path.join(folder, "c.pem"), os.path.join(folder, "k.pem")
        first.cert_chain_pems[0].write_to_path(cert_path)
        second.private_key_pem.write_to_path(key_path)
        error = self.assertRaises(StartupError, tls_options, cert_path, key_path)
        self.assertIn("cannot use certificate", str(error))


class OptionsTests(TestCase):
    """
    `twistd stalwart` options: every setting, one-line errors.
    """

    def test_help_lists_every_setting(self):
        """--help shows an option for each setting, with its default."""
        usage = str(Options())
        for setting in SETTINGS:
            self.assertIn(f"--{setting.name}=", usage)
        self.assertIn("[default: 8080]", usage)

    def test_command_line_reaches_settings(self):
        """A --name=value option becomes the setting."""
        options = Options()
        options.parseOptions(["--jmap-port=8125", "--db-path=/tmp/x"])
        self.assertEqual(options.settings.jmap_port, 8125)
        self.assertEqual(options.settings.source("jmap-port"), "command line")

    def test_bad_value_exits_with_one_line(self):
        """A bad value exits with a message naming setting and value."""
        error = self.assertRaises(SystemExit, Options().parseOptions, ["--max-calls-in-request=-3"])
        self.assertIn("max-calls-in-request", str(error.code))
        self.assertIn("-3", str(error.code))
        self.assertNotIn("\n", str(error.code))

    def test_unknown_option_exits_with_one_line(self):
        """An unknown option exits with one line, not the whole usage."""
        error = self.assertRaises(SystemExit, Options().parseOptions, ["--no-such-thing=1"])
        self.assertIn("no-such-thing", str(error.code))
        self.assertNotIn("\n", str(error.code))


class FakeDirectory:
    """Answers logins from a dict, as the directory would."""

    def __init__(self, accounts):
        self._accounts = accounts
        self.attempts = []

    def groups_of(self, principal_id):
        return defer.succeed([])

    def recently_verified(self, login, password):
        # Nothing is cached: every request counts as an attempt.
        return None

    def authenticate(self, login, password):
        self.attempts.append((login, password))
        principal = self._accounts.get((login, password))
        return defer.succeed(principal)


class Principal:
    def __init__(self, name, principal_id=7, email=None):
        self.name = name
        self.id = principal_id
        self.email = email


class SessionAuthenticationTests(TestCase):
    """
    The Session URL's Basic challenge, through the Klein app alone.
    """

    def setUp(self):
        self.ready = True
        self.directory = FakeDirectory({("jane", "pässword"): Principal("jane")})
        settings = load_settings(None, {}, {})
        server = JmapServer(settings, self.directory, [CoreExtension()])
        self.stopping = False
        self.http = JmapHttp(
            server, self.directory, settings, lambda: self.ready,
            is_stopping=lambda: self.stopping,
        )
        self.treq = StubTreq(self.http.resource())

    @defer.inlineCallbacks
    def get(self, headers=None):
        response = yield self.treq.get("http://127.0.0.1/.well-known/jmap", headers=headers)
        body = yield response.content()
        return response, body

    @defer.inlineCallbacks
    def test_no_credentials(self):
        """Without credentials: 401, a Basic challenge, a problem document."""
        response, body = yield self.get()
        self.assertEqual(response.code, 401)
        challenge = response.headers.getRawHeaders(b"WWW-Authenticate")[0]
        self.assertTrue(challenge.startswith(b"Basic realm="))
        self.assertIn(b"application/problem+json", response.headers.getRawHeaders(b"Content-Type")[0])
        self.assertEqual(self.directory.attempts, [])

    @defer.inlineCallbacks
    def test_utf8_credentials(self):
        """Credentials are decoded as UTF-8, as the challenge announces."""
        response, body = yield self.get(basic("jane", "pässword"))
        self.assertEqual(response.code, 200)
        self.assertIn(b'"username":"jane"', body)

    @defer.inlineCallbacks
    def test_malformed_headers(self):
        """Garbage in Authorization gets the challenge, never a server error."""
        for header in (b"Basic", b"Basic !!!", b"Bearer abc", b"Basic " + b64encode(b"nocolon"),
                       b"Basic " + b64encode(b"\xff\xfe:x")):
            response, _ = yield self.get({b"Authorization": [header]})
            self.assertEqual(response.code, 401, header)
        self.assertEqual(self.directory.attempts, [])

    @defer.inlineCallbacks
    def test_not_ready(self):
        """Before the node's data is open the server answers 503, not 401."""
        self.ready = False
        response, body = yield self.get(basic("jane", "pässword"))
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"Retry-After"), [b"5"])

    @defer.inlineCallbacks
    def test_shutting_down(self):
        """While the node stops, a 503 says it is shutting down, as serverUnavailable."""
        self.ready, self.stopping = False, True
        response, body = yield self.get(basic("jane", "pässword"))
        self.assertEqual(response.code, 503)
        document = json.loads(body)
        self.assertEqual(document["type"], "urn:ietf:params:jmap:error:serverUnavailable")
        self.assertIn("shutting down", document["detail"])
        self.assertEqual(response.headers.getRawHeaders(b"Retry-After"), [b"5"])

    @defer.inlineCallbacks
    def test_failure_is_a_problem_document(self):
        """A failure behind a route answers 500 with JSON, and is logged."""
        self.directory.authenticate = lambda login, password: defer.fail(RuntimeError("boom"))
        response, body = yield self.get(basic("jane", "pässword"))
        self.assertEqual(response.code, 500)
        self.assertIn(b"application/problem+json", response.headers.getRawHeaders(b"Content-Type")[0])
        self.assertIn(b'"status":500', body)
        self.assertNotIn(b"boom", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_api_answers_like_every_route(self):
        """
        The API endpoint skips Klein's router, not its answers: a 401 with
        the challenge, a 500 problem document for a failure, a 405 for GET.
        """
        url = "http://127.0.0.1/jmap/"
        echo = b'{"using":["urn:ietf:params:jmap:core"],"methodCalls":[["Core/echo",{},"c"]]}'
        response = yield self.treq.post(url, echo)
        self.assertEqual(response.code, 401)
        self.assertTrue(response.headers.getRawHeaders(b"WWW-Authenticate"))
        response = yield self.treq.post(url, echo, headers=basic("jane", "pässword"))
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.json())["methodResponses"], [["Core/echo", {}, "c"]])
        self.directory.authenticate = lambda login, password: defer.fail(RuntimeError("boom"))
        response = yield self.treq.post(url, echo, headers=basic("jane", "pässword"))
        self.assertEqual(response.code, 500)
        self.assertEqual(json.loads((yield response.content()))["status"], 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        response = yield self.treq.get(url, headers=basic("jane", "pässword"))
        self.assertEqual(response.code, 405)

    def test_parse_basic(self):
        """A password may contain colons; the login may not be empty."""
        self.assertEqual(parse_basic(b"Basic " + b64encode(b"a:b:c")), ("a", "b:c"))
        self.assertIsNone(parse_basic(b"Basic " + b64encode(b":pw")))
        self.assertIsNone(parse_basic(None))


class SessionAccountsTests(NodeServiceMixin, TestCase):
    """
    The Session lists the accounts of the groups a user belongs to.
    """

    @defer.inlineCallbacks
    def test_group_account_listed(self):
        """A member of a group sees the group's account, not personal, with its name."""
        from stalwart_tw.jmap.session import account_id

        service = yield self.start(node_settings(self))
        directory = service.directory
        yield directory.create_principal("domain", "example.org")
        jane = yield directory.create_principal("individual", "jane", secret="jane-password")
        sales = yield directory.create_principal(
            "group", "sales", email="sales@example.org", members=["jane"]
        )
        port = service.ports["JMAP"].getHost().port
        response = yield self.client().get(
            f"http://127.0.0.1:{port}/jmap/session", headers=basic("jane", "jane-password")
        )
        session = yield response.json()
        accounts = session["accounts"]
        self.assertEqual(set(accounts), {account_id(jane.id), account_id(sales.id)})
        self.assertFalse(accounts[account_id(sales.id)]["isPersonal"])
        self.assertEqual(accounts[account_id(sales.id)]["name"], "sales@example.org")
        yield service.stopService()
