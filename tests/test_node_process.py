"""
The real thing: `twistd -n stalwart` started as a process on loopback ports,
spoken to over HTTP and telnet, and stopped with SIGTERM.
"""

import os
import re
import socket
import sys
from base64 import b64encode

from treq.client import HTTPClient
from twisted.conch import telnet
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = "from twisted.scripts.twistd import run; run()"
LISTENING = re.compile(rb"(JMAP|admin shell) listening on \w+://127\.0\.0\.1:(\d+)")


def free_port():
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def basic(login, password):
    return {b"Authorization": [b"Basic " + b64encode(f"{login}:{password}".encode())]}


class NodeProcess(protocol.ProcessProtocol):
    """
    A `twistd -n stalwart` child: collects its output and fires Deferreds
    when a line appears and when it exits.
    """

    def __init__(self):
        self.output = b""
        # What came on standard output alone: the log of `twistd -n`.
        self.stdout = b""
        self.ended = defer.Deferred()
        self._waiting = []

    def outReceived(self, data):
        self.stdout += data
        self._received(data)

    def errReceived(self, data):
        self._received(data)

    def _received(self, data):
        self.output += data
        for entry in list(self._waiting):
            pattern, after, waiter = entry
            match = re.compile(pattern).search(self.output, after)
            if match:
                self._waiting.remove(entry)
                waiter.callback(match)

    def processEnded(self, reason):
        for _, _, waiter in self._waiting:
            waiter.errback(AssertionError(b"exited before printing it:\n" + self.output))
        self._waiting = []
        self.ended.callback(reason.value.exitCode)

    def wait_for(self, pattern, after=0):
        """A Deferred firing with the match once the output from C{after} on matches."""
        match = re.compile(pattern).search(self.output, after)
        if match:
            return defer.succeed(match)
        waiter = defer.Deferred()
        self._waiting.append((pattern, after, waiter))
        return waiter


def start_node(test, *arguments):
    """Spawn a node with the given settings; stop it when the test ends."""
    child = NodeProcess()
    environment = dict(os.environ, PYTHONPATH=REPOSITORY)
    working_folder = os.path.abspath(test.mktemp())
    os.makedirs(working_folder)
    transport = reactor.spawnProcess(
        child,
        sys.executable,
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "stalwart", *arguments],
        env=environment,
        path=working_folder,
    )

    def stop_if_running():
        if child.ended.called:
            return None
        transport.signalProcess("KILL")
        return child.ended

    test.addCleanup(stop_if_running)
    return child, transport


class ShellClient(telnet.TelnetProtocol):
    """
    A telnet client that lets the server echo, as a terminal telnet does,
    and collects what the server shows.
    """

    def __init__(self):
        self.screen = b""
        self._waiting = []

    def enableRemote(self, option):
        return option == telnet.ECHO

    def disableRemote(self, option):
        pass

    def dataReceived(self, data):
        self.screen += data
        for text, waiter in list(self._waiting):
            if text in self.screen:
                self._waiting.remove((text, waiter))
                waiter.callback(self.screen)

    def wait_for(self, text):
        if text in self.screen:
            return defer.succeed(self.screen)
        waiter = defer.Deferred()
        self._waiting.append((text, waiter))
        return waiter


class NodeProcessTests(TestCase):
    """
    A node started by twistd serves, answers its admin shell and stops cleanly.
    """

    timeout = 90

    def node_arguments(self, *extra):
        self.data = os.path.abspath(self.mktemp())
        return (
            f"--db-path={self.data}",
            "--jmap-port=0",
            f"--manhole-port={free_port()}",
            "--admin-secret=the-process-secret",
            *extra,
        )

    @defer.inlineCallbacks
    def start(self, *extra):
        child, transport = start_node(self, *self.node_arguments(*extra))
        yield child.wait_for(rb"node ready")
        ports = {
            name.decode(): int(port) for name, port in LISTENING.findall(child.output)
        }
        return child, transport, ports

    @defer.inlineCallbacks
    def test_serves_then_stops_on_sigterm(self):
        """The Session URL challenges, admits the admin, and SIGTERM exits 0."""
        child, transport, ports = yield self.start()
        url = f"http://127.0.0.1:{ports['JMAP']}/.well-known/jmap"

        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        anonymous = yield http.get(url)
        self.assertEqual(anonymous.code, 401)
        self.assertIn(b"Basic", anonymous.headers.getRawHeaders(b"WWW-Authenticate")[0])
        yield anonymous.content()

        wrong = yield http.get(url, headers=basic("admin", "not-it"))
        self.assertEqual(wrong.code, 401)
        yield wrong.content()

        admitted = yield http.get(url, headers=basic("admin", "the-process-secret"))
        self.assertEqual(admitted.code, 200)
        self.assertEqual((yield admitted.json())["username"], "admin")

        transport.signalProcess("TERM")
        self.assertEqual((yield child.ended), 0)
        self.assertIn(b"node stopped", child.output)
        self.assertNotIn(b"Traceback", child.output)

    @defer.inlineCallbacks
    def test_guessers_throttled_while_the_admin_is_served(self):
        """
        Against a real node: 40 concurrent wrong-password requests get 401
        until rate-limit-auth is used up, then 429 with Retry-After; the
        admin, logged in before, is answered throughout.
        """
        child, transport, ports = yield self.start()
        url = f"http://127.0.0.1:{ports['JMAP']}/.well-known/jmap"
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        admin = basic("admin", "the-process-secret")
        response = yield http.get(url, headers=admin)
        self.assertEqual(response.code, 200)
        yield response.content()

        @defer.inlineCallbacks
        def guess(number):
            answer = yield http.get(url, headers=basic("admin", f"guess-{number}"))
            yield answer.content()
            return answer.code, answer.headers.getRawHeaders(b"Retry-After")

        @defer.inlineCallbacks
        def admin_meanwhile():
            codes = []
            for _ in range(5):
                answer = yield http.get(url, headers=admin)
                yield answer.content()
                codes.append(answer.code)
            return codes

        guesses = defer.gatherResults([guess(number) for number in range(40)])
        served = yield admin_meanwhile()
        answers = yield guesses
        self.assertEqual(served, [200] * 5)
        codes = [code for code, _ in answers]
        self.assertEqual(set(codes) - {401, 429, 503}, set())
        self.assertGreaterEqual(codes.count(429), 20)
        self.assertLessEqual(codes.count(401), 10)
        self.assertTrue(all(retry for code, retry in answers if code == 429))
        self.assertIn(b"failed login for 'admin'", child.output)
        self.assertNotIn(b"guess-", child.output)
        transport.signalProcess("TERM")
        self.assertEqual((yield child.ended), 0)

    @defer.inlineCallbacks
    def test_admin_shell_over_telnet(self):
        """The admin shell asks for the password, then runs helpers against the node."""
        child, transport, ports = yield self.start()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", ports["admin shell"])
        shell = ShellClient()
        telnet_transport = telnet.TelnetTransport(lambda: shell)
        yield connectProtocol(endpoint, telnet_transport)
        self.addCleanup(telnet_transport.loseConnection)
        # TelnetTransport turns each "\n" into the "\r\n" telnet sends.
        yield shell.wait_for(b"Username: ")
        telnet_transport.write(b"admin\n")
        yield shell.wait_for(b"Password: ")
        telnet_transport.write(b"the-process-secret\n")
        yield shell.wait_for(b">>> ")
        telnet_transport.write(b"create_domain('example.org')\n")
        telnet_transport.write(b"list_domains()\n")
        yield shell.wait_for(b"example.org")
        telnet_transport.loseConnection()
        transport.signalProcess("TERM")
        self.assertEqual((yield child.ended), 0)

    @defer.inlineCallbacks
    def test_data_survives_restart(self):
        """The admin password generated at first start still works after a restart."""
        self.data = os.path.abspath(self.mktemp())
        arguments = (f"--db-path={self.data}", "--jmap-port=0", "--manhole-port=0")
        child, transport = start_node(self, *arguments)
        password = (yield child.wait_for(rb"its password is (\S+) \(shown once\)")).group(1)
        yield child.wait_for(rb"node ready")
        # On the terminal (standard error), not in the log.
        self.assertNotIn(password, child.stdout)
        self.assertIn(b"generated password", child.stdout)
        transport.signalProcess("TERM")
        self.assertEqual((yield child.ended), 0)

        child, transport = start_node(self, *arguments)
        yield child.wait_for(rb"node ready")
        self.assertNotIn(b"its password is", child.output)
        port = int(LISTENING.search(child.output).group(2))
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = yield http.get(
            f"http://127.0.0.1:{port}/.well-known/jmap", headers=basic("admin", password.decode())
        )
        self.assertEqual(response.code, 200)
        yield response.content()
        transport.signalProcess("TERM")
        self.assertEqual((yield child.ended), 0)

    @defer.inlineCallbacks
    def test_corrupt_database(self):
        """A database file that is not SQLite stops start-up with one line and status 1."""
        arguments = self.node_arguments()
        os.makedirs(os.path.join(self.data, "idx"))
        with open(os.path.join(self.data, "idx", "stalwart.sqlite3"), "wb") as database:
            database.write(b"this is not a database" * 100)
        child, _ = start_node(self, *arguments)
        self.assertEqual((yield child.ended), 1)
        self.assertIn(b"cannot open database", child.output)
        self.assertNotIn(b"Traceback", child.output)

    @defer.inlineCallbacks
    def test_port_in_use(self):
        """A JMAP port already taken gives one clear line and exit status 1."""
        taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        child, _ = start_node(
            self, *self.node_arguments(), f"--jmap-port={taken.getHost().port}"
        )
        self.assertEqual((yield child.ended), 1)
        self.assertIn(b"cannot listen for JMAP on 127.0.0.1 port", child.output)
        self.assertNotIn(b"Traceback", child.output)

    @defer.inlineCallbacks
    def test_bad_setting(self):
        """A bad value stops start-up with one line naming setting and value."""
        child, _ = start_node(self, "--jmap-port=eighty")
        self.assertEqual((yield child.ended), 1)
        lines = child.output.strip().splitlines()
        self.assertEqual(len(lines), 1, child.output)
        self.assertIn(b"jmap-port", lines[0])
        self.assertIn(b"eighty", lines[0])

    @defer.inlineCallbacks
    def test_unknown_option(self):
        """An unknown option is one line too, not a page of usage."""
        child, _ = start_node(self, "--jmap-prot=80")
        self.assertEqual((yield child.ended), 1)
        self.assertEqual(len(child.output.strip().splitlines()), 1, child.output)
        self.assertIn(b"jmap-prot", child.output)
