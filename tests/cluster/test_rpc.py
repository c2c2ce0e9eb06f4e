"""
Tests for the cluster RPC channel: framing, the key handshake, request
correlation, the connection manager, and TLS with its session binding.
"""

import os
import random
import stat

from twisted.internet import reactor as real_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.ssl import Certificate
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from stalwart_tw.cluster.peers import PeerConnections, backoff_delay
from stalwart_tw.cluster.rpc import (
    AUTH,
    HELLO,
    LENGTH,
    REQUEST,
    FrameDecoder,
    RpcDisconnected,
    RpcPeerUnavailable,
    RpcProtocol,
    RpcRemoteError,
    RpcServerFactory,
    RpcTimeout,
    encode_frame,
    listen_rpc,
    tls_exporter,
)
from stalwart_tw.logs import LOG_INTERVAL, LogThrottle
from stalwart_tw.cluster.tls import generate_self_signed, rpc_tls
from tests.support import node_settings

KEY = "the cluster's encryption key"
OTHER_KEY = b"another cluster's key"
# Stands in for the TLS exporter over a plain StringTransport.
BINDING = b"b" * 32
PEER = ("10.0.0.2", 7911)


def rpc_settings(test, **overrides):
    """A test node's settings with short RPC timeouts (ms)."""
    values = {
        "rpc-port": "0",
        "rpc-bind-addr": "127.0.0.1",
        "rpc-timeout": "500",
        "rpc-inactivity-timeout": "10000",
        "rpc-retries-max": "5",
        "rpc-backoff-max": "300",
    }
    values.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return node_settings(test, **values)


def capture_warnings(test):
    """The list our RPC code's warn events (rpc.py and peers.py) will be appended to."""
    warnings = []

    def observe(event):
        if event.get("log_level") is LogLevel.warn and event.get(
            "log_namespace", ""
        ).startswith(("stalwart_tw.cluster.rpc", "stalwart_tw.cluster.peers")):
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return warnings


def frame_kinds(data):
    """The kinds of the frames in a byte stream."""
    return [message[0] for message in FrameDecoder(2**30).feed(data)]


class Link:
    """
    Two RPC protocols joined by StringTransports on one Clock; pump()
    carries bytes both ways until quiet, then carries a close across.
    """

    def __init__(self, test, client_key=KEY, server_key=KEY, client_handlers=None,
                 server_handlers=None, settings=None, client=None, client_transport=None,
                 clock=None, **server_options):
        self.clock = clock or Clock()
        self.settings = settings or rpc_settings(test)
        self.client = client or RpcProtocol(
            self.settings, client_key, client_handlers or {}, "client", self.clock,
            binding=lambda transport: BINDING,
        )
        self.server = RpcProtocol(
            self.settings, server_key, server_handlers or {}, "server", self.clock,
            binding=lambda transport: BINDING, **server_options,
        )
        self.client_transport = client_transport or StringTransport(
            peerAddress=IPv4Address("TCP", *PEER)
        )
        self.server_transport = StringTransport(
            peerAddress=IPv4Address("TCP", "10.0.0.1", 50000)
        )
        # Everything each side wrote, to check what left before a failure.
        self.sent_by_client = b""
        self.sent_by_server = b""
        if client_transport is None:
            self.client.makeConnection(self.client_transport)
        self.server.makeConnection(self.server_transport)

    def pump(self):
        while True:
            moved = False
            to_server = self.client_transport.value()
            if to_server:
                self.client_transport.clear()
                self.sent_by_client += to_server
                if not self.server._lost:
                    self.server.dataReceived(to_server)
                moved = True
            to_client = self.server_transport.value()
            if to_client:
                self.server_transport.clear()
                self.sent_by_server += to_client
                if not self.client._lost:
                    self.client.dataReceived(to_client)
                moved = True
            if not moved:
                break
        if self.client_transport.disconnecting or self.server_transport.disconnecting:
            self.drop()

    def drop(self):
        for protocol in (self.client, self.server):
            if not protocol._lost:
                protocol.connectionLost(Failure(ConnectionDone()))


class HandshakeTests(TestCase):
    """
    Both sides prove they hold encryption-key before anything else flows.
    """

    def setUp(self):
        self.warnings = capture_warnings(self)
        self.seen = []

    def echo(self, peer, payload):
        self.seen.append((peer, payload))
        return payload

    def test_right_key(self):
        """With the same key both sides authenticate and a request round-trips."""
        link = Link(self, client_key=KEY, server_key=KEY.encode(),
                    server_handlers={"echo": self.echo})
        link.pump()
        self.assertTrue(link.client.authenticated)
        self.assertTrue(link.server.authenticated)
        result = link.client.call("echo", {"n": [1, b"2"]})
        link.pump()
        self.assertEqual(self.successResultOf(result), {"n": [1, b"2"]})
        self.assertEqual(self.seen[0][0].role, "client")
        self.assertEqual(self.warnings, [])

    def test_wrong_key(self):
        """With different keys both sides close, having sent only HELLO and AUTH."""
        link = Link(self, server_key=OTHER_KEY, server_handlers={"echo": self.echo})
        link.pump()
        self.assertTrue(link.client_transport.disconnecting)
        self.assertTrue(link.server_transport.disconnecting)
        self.assertFalse(link.client.authenticated or link.server.authenticated)
        self.assertEqual(frame_kinds(link.sent_by_client), [HELLO, AUTH])
        self.assertEqual(frame_kinds(link.sent_by_server), [HELLO, AUTH])
        self.assertEqual(self.seen, [])
        # One line per side.
        self.assertEqual(len(self.warnings), 2)

    def test_reflected_auth(self):
        """A side's own MAC sent back to it (same role) is rejected."""
        clock = Clock()
        settings = rpc_settings(self)
        server = RpcProtocol(settings, KEY, {}, "server", clock, binding=lambda t: BINDING)
        transport = StringTransport()
        server.makeConnection(transport)
        our_nonce = frame_kinds_and_values(transport.value())[0][1]
        transport.clear()
        server.dataReceived(encode_frame([HELLO, our_nonce]))
        # The server's AUTH over its own nonce is what a reflector would replay.
        reflected = frame_kinds_and_values(transport.value())[0][1]
        server.dataReceived(encode_frame([AUTH, reflected]))
        self.assertTrue(transport.disconnecting)
        self.assertFalse(server.authenticated)

    def test_no_answer(self):
        """A peer that never authenticates is dropped after rpc-timeout."""
        clock = Clock()
        client = RpcProtocol(rpc_settings(self), KEY, {}, "client", clock,
                             binding=lambda t: BINDING)
        transport = StringTransport()
        client.makeConnection(transport)
        clock.advance(0.499)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.002)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.warnings), 1)

    def test_request_before_auth(self):
        """A REQUEST before AUTH closes the connection; the handler never runs."""
        server = RpcProtocol(rpc_settings(self), KEY, {"echo": self.echo}, "server", Clock(),
                             binding=lambda t: BINDING)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(encode_frame([HELLO, os.urandom(32)])
                            + encode_frame([REQUEST, 1, "echo", "hi"]))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.seen, [])
        self.assertEqual(frame_kinds(transport.value()), [HELLO, AUTH])
        self.assertEqual(len(self.warnings), 1)

    def test_server_calls_client(self):
        """Once authenticated the connection is symmetric: the server can call too."""
        link = Link(self, client_handlers={"echo": self.echo})
        link.pump()
        result = link.server.call("echo", "back")
        link.pump()
        self.assertEqual(self.successResultOf(result), "back")
        self.assertEqual(self.seen[0][0].role, "server")


def frame_kinds_and_values(data):
    return list(FrameDecoder(2**30).feed(data))


class FramingTests(TestCase):
    """
    Frames survive any chunking; bad frames close the connection with one
    log line.
    """

    def setUp(self):
        self.warnings = capture_warnings(self)
        self.link = Link(self, server_handlers={"echo": lambda peer, payload: payload},
                         max_frame=1024)
        self.link.pump()

    def test_split_byte_by_byte(self):
        """A frame delivered one byte at a time is still one request."""
        result = self.link.client.call("echo", "x" * 100)
        data = self.link.client_transport.value()
        self.link.client_transport.clear()
        for index in range(len(data)):
            self.link.server.dataReceived(data[index:index + 1])
        self.link.pump()
        self.assertEqual(self.successResultOf(result), "x" * 100)

    def test_coalesced(self):
        """Several frames in one write are all handled, in order."""
        results = [self.link.client.call("echo", n) for n in range(3)]
        data = self.link.client_transport.value()
        self.link.client_transport.clear()
        self.link.server.dataReceived(data)
        self.assertEqual(len(frame_kinds(self.link.server_transport.value())), 3)
        self.link.pump()
        self.assertEqual([self.successResultOf(r) for r in results], [0, 1, 2])

    def test_oversize_length(self):
        """A length prefix over the cap closes at once, with one log line."""
        self.link.server.dataReceived(LENGTH.pack(1025))
        self.assertTrue(self.link.server_transport.disconnecting)
        self.assertEqual(len(self.warnings), 1)
        self.assertIn("exceeds 1024", self.warnings[0]["reason"])

    def test_oversize_before_auth(self):
        """Before authentication even a modest frame is too large."""
        server = RpcProtocol(rpc_settings(self), KEY, {}, "server", Clock(),
                             binding=lambda t: BINDING)
        transport = StringTransport()
        server.makeConnection(transport)
        server.dataReceived(LENGTH.pack(4096))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.warnings), 1)

    def test_garbage(self):
        """A body that is not msgpack closes the connection."""
        self.link.server.dataReceived(LENGTH.pack(1) + b"\xc1")
        self.assertTrue(self.link.server_transport.disconnecting)
        self.assertEqual(len(self.warnings), 1)

    def test_wrong_shape(self):
        """Valid msgpack that is not a message closes the connection."""
        self.link.server.dataReceived(encode_frame({"kind": "REQUEST"}))
        self.assertTrue(self.link.server_transport.disconnecting)
        self.assertEqual(len(self.warnings), 1)

    def test_handshake_frame_after_auth(self):
        """A second HELLO after authentication is a protocol violation."""
        self.link.server.dataReceived(encode_frame([HELLO, b"n" * 32]))
        self.assertTrue(self.link.server_transport.disconnecting)


class CorrelationTests(TestCase):
    """
    Responses reach the right caller; failures are named exceptions.
    """

    def setUp(self):
        self.answers = {}

        def slow(peer, payload):
            self.answers[payload] = Deferred()
            return self.answers[payload]

        def refuse(peer, payload):
            raise RpcRemoteError("notFound", f"no {payload}")

        def broken(peer, payload):
            raise ValueError("handler bug")

        self.link = Link(self, server_handlers={"slow": slow, "refuse": refuse,
                                                "broken": broken})
        self.link.pump()

    def test_out_of_order(self):
        """Two calls answered in reverse order each get their own result."""
        first = self.link.client.call("slow", "a")
        second = self.link.client.call("slow", "b")
        self.link.pump()
        self.answers["b"].callback("result b")
        self.link.pump()
        self.answers["a"].callback("result a")
        self.link.pump()
        self.assertEqual(self.successResultOf(first), "result a")
        self.assertEqual(self.successResultOf(second), "result b")

    def test_close_unanswered_is_cut(self):
        """A peer that never answers a graceful close is cut off after rpc-timeout."""
        aborted = []
        self.link.server_transport.abortConnection = lambda: aborted.append(True)
        self.link.server.close()
        self.link.clock.advance(self.link.settings.rpc_timeout / 1000.0 - 0.01)
        self.assertEqual(aborted, [])
        self.link.clock.advance(0.02)
        self.assertEqual(aborted, [True])

    def test_remote_error(self):
        """A handler's RpcRemoteError reaches the caller with its name."""
        result = self.link.client.call("refuse", "thing")
        self.link.pump()
        error = self.failureResultOf(result, RpcRemoteError).value
        self.assertEqual((error.name, error.message), ("notFound", "no thing"))

    def test_handler_exception(self):
        """A handler bug is logged once and answered as serverFail."""
        result = self.link.client.call("broken", None)
        self.link.pump()
        self.assertEqual(self.failureResultOf(result, RpcRemoteError).value.name, "serverFail")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_unknown_method(self):
        """An unknown method is answered unknownMethod."""
        result = self.link.client.call("nope", None)
        self.link.pump()
        self.assertEqual(self.failureResultOf(result, RpcRemoteError).value.name,
                         "unknownMethod")

    def test_timeout(self):
        """A call unanswered within its timeout fails; a late answer is ignored."""
        result = self.link.client.call("slow", "a", timeout=2)
        self.link.pump()
        self.link.clock.advance(1.9)
        self.assertNoResult(result)
        self.link.clock.advance(0.1)
        self.failureResultOf(result, RpcTimeout)
        self.answers["a"].callback("late")
        self.link.pump()
        self.assertFalse(self.link.client_transport.disconnecting)

    def test_default_timeout(self):
        """Without a timeout argument a call waits rpc-timeout."""
        result = self.link.client.call("slow", "a")
        self.link.clock.advance(0.5)
        self.failureResultOf(result, RpcTimeout)

    def test_disconnect_fails_pending(self):
        """Losing the connection fails every pending call."""
        calls = [self.link.client.call("slow", name) for name in "ab"]
        self.link.pump()
        self.link.drop()
        for call in calls:
            self.failureResultOf(call, RpcDisconnected)
        self.failureResultOf(self.link.client.call("slow", "c"), RpcDisconnected)

    def test_inactivity(self):
        """With no frame either way for rpc-inactivity-timeout, the connection closes."""
        self.link.clock.advance(9.9)
        result = self.link.client.call("slow", "a", timeout=30)
        self.link.pump()
        self.link.clock.advance(9.9)
        # A call in flight is not idleness.
        self.link.clock.advance(10)
        self.assertFalse(self.link.client_transport.disconnecting)
        self.answers["a"].callback("done")
        self.link.pump()
        self.successResultOf(result)
        self.link.clock.advance(9.9)
        self.assertFalse(self.link.client_transport.disconnecting)
        self.link.clock.advance(0.2)
        self.assertTrue(self.link.client_transport.disconnecting)


class BackoffDelayTests(TestCase):
    """
    The backoff formula, with its jitter pinned.
    """

    def test_table(self):
        """Doubling from 100 ms, truncated at the maximum, times the jitter."""

        class Fixed:
            def uniform(self, low, high):
                return high

        for failures, backoff_max, expected in [
            (1, 180000, 0.1), (2, 180000, 0.2), (5, 180000, 1.6),
            (12, 180000, 180.0), (5, 300, 0.3), (10000, 300, 0.3),
        ]:
            self.assertAlmostEqual(backoff_delay(failures, backoff_max, Fixed()), expected)


class PeerConnectionsTests(TestCase):
    """
    Dialling on demand, reuse, queuing, backoff, giving up and reviving.
    """

    def setUp(self):
        self.warnings = capture_warnings(self)
        self.reactor = MemoryReactorClock()
        self.settings = rpc_settings(self)
        self.peers = self.make_peers()

    def make_peers(self, key=KEY):
        return PeerConnections(self.settings, key, tls_client=object(), reactor=self.reactor,
                               random=random.Random(7), binding=lambda t: BINDING)

    def refuse_last(self):
        connector = self.reactor.connectors[-1]
        factory = self.reactor.sslClients[-1][2]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def accept_last(self, server_key=KEY, handlers=None):
        """Complete the last dial over a StringTransport to a server protocol."""
        factory = self.reactor.sslClients[-1][2]
        wrapper = factory.buildProtocol(IPv4Address("TCP", *PEER))
        transport = StringTransport(peerAddress=IPv4Address("TCP", *PEER))
        wrapper.makeConnection(transport)
        link = Link(self, settings=self.settings, server_key=server_key,
                    server_handlers=handlers or {"echo": lambda peer, payload: payload},
                    client=wrapper._wrappedProtocol, client_transport=transport,
                    clock=self.reactor)
        link.pump()
        return link

    def test_dial_on_demand_and_reuse(self):
        """Calls while connecting share one dial; later calls reuse the connection."""
        self.assertEqual(self.peers.state(PEER), "idle")
        first = self.peers.call(PEER, "echo", 1)
        second = self.peers.call(PEER, "echo", 2)
        self.assertEqual(self.peers.state(PEER), "connecting")
        self.assertEqual(len(self.reactor.sslClients), 1)
        host, port = self.reactor.sslClients[0][:2]
        self.assertEqual((host, port), PEER)
        link = self.accept_last()
        self.assertEqual(self.peers.state(PEER), "connected")
        self.assertEqual([self.successResultOf(first), self.successResultOf(second)], [1, 2])
        third = self.peers.call(PEER, "echo", 3)
        link.pump()
        self.assertEqual(self.successResultOf(third), 3)
        self.assertEqual(len(self.reactor.sslClients), 1)

    def test_backoff_sequence(self):
        """Redials wait 100 ms doubling, truncated at rpc-backoff-max, with seeded jitter."""
        jitter = random.Random(7)
        expected = [min(0.3, 0.1 * 2 ** n) * jitter.uniform(0.5, 1.0) for n in range(4)]
        call = self.peers.call(PEER, "echo", 1)
        self.refuse_last()
        self.failureResultOf(call, RpcDisconnected)
        for attempt, delay in enumerate(expected, start=1):
            self.assertEqual(self.peers.state(PEER), "backoff")
            self.reactor.advance(delay - 0.0001)
            self.assertEqual(len(self.reactor.sslClients), attempt)
            self.reactor.advance(0.0002)
            self.assertEqual(len(self.reactor.sslClients), attempt + 1)
            self.assertEqual(self.peers.state(PEER), "connecting")
            self.refuse_last()
        self.assertEqual(self.peers.state(PEER), "unreachable")
        self.assertEqual(len(self.warnings), 1)

    def test_retries_cap_and_peer_alive(self):
        """After rpc-retries-max failures calls fail fast until peer_alive."""
        self.peers.call(PEER, "echo", 1).addErrback(lambda _: None)
        for _ in range(5):
            self.refuse_last()
            self.reactor.advance(1)
        attempts = len(self.reactor.sslClients)
        self.assertEqual(attempts, 5)
        self.failureResultOf(self.peers.call(PEER, "echo", 2), RpcPeerUnavailable)
        self.reactor.advance(600)
        self.assertEqual(len(self.reactor.sslClients), attempts)
        self.peers.peer_alive(PEER)
        self.assertEqual(self.peers.state(PEER), "idle")
        call = self.peers.call(PEER, "echo", 3)
        self.assertEqual(len(self.reactor.sslClients), attempts + 1)
        self.accept_last()
        self.assertEqual(self.successResultOf(call), 3)

    def test_attempt_timeout(self):
        """A dial that does not connect within rpc-timeout is abandoned."""
        call = self.peers.call(PEER, "echo", 1, timeout=5)
        self.reactor.advance(0.5)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.failureResultOf(call, RpcDisconnected)
        self.assertEqual(self.peers.state(PEER), "backoff")

    def test_wrong_key_is_a_failed_attempt(self):
        """A peer that fails the handshake counts as a failed attempt."""
        call = self.peers.call(PEER, "echo", 1)
        self.accept_last(server_key=OTHER_KEY)
        self.failureResultOf(call, RpcDisconnected)
        self.assertEqual(self.peers.state(PEER), "backoff")

    def test_inactivity_close(self):
        """An idle connection closes after rpc-inactivity-timeout; the next call redials."""
        self.peers.call(PEER, "echo", 1)
        link = self.accept_last()
        self.reactor.advance(10)
        link.pump()
        self.assertEqual(self.peers.state(PEER), "idle")
        self.peers.call(PEER, "echo", 2)
        self.assertEqual(len(self.reactor.sslClients), 2)

    def test_forget(self):
        """forget() drops a peer's link: its calls fail, no redial, the next call dials anew."""
        call = self.peers.call(PEER, "echo", 1)
        self.peers.forget(PEER)
        self.failureResultOf(call, RpcDisconnected)
        self.assertEqual(self.peers.state(PEER), "idle")
        self.reactor.advance(10)
        self.assertEqual(len(self.reactor.sslClients), 1)
        self.peers.call(PEER, "echo", 2)
        link = self.accept_last()
        self.assertEqual(self.peers.state(PEER), "connected")
        self.peers.forget(PEER)
        link.pump()
        self.assertTrue(link.client._closing)
        self.assertEqual(self.peers.state(PEER), "idle")

    def test_wrong_key_logged_once_per_interval(self):
        """A peer failing the handshake on every redial is one warning an interval."""
        for _ in range(3):
            self.peers.call(PEER, "echo", 1).addErrback(lambda _: None)
            self.accept_last(server_key=OTHER_KEY)
            self.reactor.advance(1)
        ours = [w for w in self.warnings if w.get("host") == PEER[0]]
        self.assertEqual([w["count"] for w in ours], [1])

    def test_close(self):
        """close() fails waiting calls and stops dialling."""
        call = self.peers.call(PEER, "echo", 1)
        self.successResultOf(self.peers.close())
        self.failureResultOf(call, RpcDisconnected)
        self.failureResultOf(self.peers.call(PEER, "echo", 2), RpcDisconnected)


class HandshakeLogTests(TestCase):
    """
    Failed handshakes are logged once per peer host and interval, counted.
    """

    def setUp(self):
        self.warnings = capture_warnings(self)
        self.clock = Clock()
        self.factory = RpcServerFactory(rpc_settings(self), KEY, {}, reactor=self.clock,
                                        binding=lambda t: BINDING)

    def accept(self, port, host="10.0.0.7"):
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_rate_limit_table(self):
        """The first event and the first after each interval pass; the table stays bounded."""
        clock = Clock()
        limit = LogThrottle(clock, interval=60, most=3)
        self.assertEqual([limit.admit("x") for _ in range(4)], [1, None, None, None])
        clock.advance(59.9)
        self.assertIsNone(limit.admit("x"))
        clock.advance(0.1)
        self.assertEqual(limit.admit("x"), 5)
        for address in ("a", "b", "c"):
            limit.admit(address)
        self.assertEqual(len(limit._table), 3)
        self.assertNotIn("x", limit._table)  # logged longest ago: dropped first
        self.assertEqual(limit.admit("x"), 1)

    def test_failed_handshakes_one_line_per_interval(self):
        """Twenty bad AUTHs and a timeout from one host: one warning, then one with the count."""
        for port in range(50000, 50020):
            protocol, transport = self.accept(port)
            protocol.dataReceived(encode_frame([HELLO, os.urandom(32)])
                                  + encode_frame([AUTH, os.urandom(32)]))
            self.assertTrue(transport.disconnecting)
        self.accept(50020)
        self.clock.advance(0.5)
        self.accept(7911, host="10.0.0.8")[0].dataReceived(encode_frame([REQUEST, 1, "x", 0]))
        self.assertEqual(sorted((w["host"], w["count"]) for w in self.warnings),
                         [("10.0.0.7", 1), ("10.0.0.8", 1)])
        self.clock.advance(LOG_INTERVAL)
        self.accept(50021)[0].dataReceived(encode_frame([AUTH, os.urandom(32)]))
        self.assertEqual((self.warnings[-1]["host"], self.warnings[-1]["count"]),
                         ("10.0.0.7", 21))
        self.assertEqual(len(self.warnings), 3)

    def test_after_authentication_every_failure_logged(self):
        """Only handshakes are limited: a bad frame on an authenticated connection is a line."""
        link = Link(self, clock=self.clock)
        link.pump()
        link.client.dataReceived(encode_frame([HELLO, os.urandom(32)]))
        self.assertEqual(len(self.warnings), 1)
        self.assertNotIn("count", self.warnings[0])


class TlsFilesTests(TestCase):
    """
    The self-signed pair is generated once and kept private.
    """

    def test_generated_once(self):
        """Without configured files a pair is written to db-path and reused."""
        settings = rpc_settings(self)
        rpc_tls(settings)
        cert_path = os.path.join(settings.db_path, "rpc.crt")
        key_path = os.path.join(settings.db_path, "rpc.key")
        with open(cert_path, "rb") as file:
            first = file.read()
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        rpc_tls(settings)
        with open(cert_path, "rb") as file:
            self.assertEqual(file.read(), first)
        subject = Certificate.loadPEM(first).getSubject()
        self.assertEqual(subject.commonName, b"stalwart-tw-rpc")


class RealTlsTests(TestCase):
    """
    Over real TLS on loopback the handshake binds to the session's exporter.
    """

    def setUp(self):
        self.warnings = capture_warnings(self)
        self.seen = []

    @inlineCallbacks
    def serve(self, settings, key=KEY, tls=None):
        tls = tls or rpc_tls(settings)

        def echo(peer, payload):
            self.seen.append(peer)
            return payload

        factory = RpcServerFactory(settings, key, {"echo": echo}, reactor=real_reactor)
        port = yield listen_rpc(real_reactor, settings, factory, tls.server)
        self.addCleanup(port.stopListening)
        self.addCleanup(factory.close)
        return factory, ("127.0.0.1", port.getHost().port)

    def client(self, settings, key=KEY, tls=None):
        tls = tls or rpc_tls(settings)
        peers = PeerConnections(settings, key, tls.client, reactor=real_reactor)
        self.addCleanup(peers.close)
        return peers

    @inlineCallbacks
    def test_round_trip(self):
        """A call round-trips over TLS 1.3; both ends compute the same exporter."""
        settings = rpc_settings(self, rpc_timeout="5000")
        factory, address = yield self.serve(settings)
        peers = self.client(settings)
        result = yield peers.call(address, "echo", {"hello": b"world"})
        self.assertEqual(result, {"hello": b"world"})
        self.assertEqual(peers.state(address), "connected")
        client = peers._links[address].protocol
        (server,) = factory.connections
        self.assertEqual(client.transport.getHandle().get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(tls_exporter(client.transport), tls_exporter(server.transport))
        self.assertEqual(self.seen[0].role, "client")

    @inlineCallbacks
    def test_wrong_key(self):
        """With different keys the call fails and the handler never runs."""
        settings = rpc_settings(self, rpc_timeout="5000")
        _, address = yield self.serve(settings, key=OTHER_KEY)
        peers = self.client(settings)
        with self.assertRaises(RpcDisconnected):
            yield peers.call(address, "echo", 1)
        self.assertEqual(self.seen, [])
        self.assertEqual(peers.state(address), "backoff")

    @inlineCallbacks
    def test_tls_domain(self):
        """With rpc-tls-domain, a certificate for that name is accepted, another refused."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        cert_pem, key_pem = generate_self_signed("node.example")
        cert_path, key_path = os.path.join(folder, "c.pem"), os.path.join(folder, "k.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            with open(path, "wb") as file:
                file.write(data)
        trust = Certificate.loadPEM(cert_pem)
        good = rpc_settings(self, rpc_timeout="5000", rpc_cert_path=cert_path,
                            rpc_key_path=key_path, rpc_tls_domain="node.example")
        _, address = yield self.serve(good)
        peers = self.client(good, tls=rpc_tls(good, trust_root=trust))
        self.assertEqual((yield peers.call(address, "echo", 1)), 1)

        wrong = rpc_settings(self, rpc_timeout="5000", rpc_cert_path=cert_path,
                             rpc_key_path=key_path, rpc_tls_domain="other.example")
        others = self.client(wrong, tls=rpc_tls(wrong, trust_root=trust))
        with self.assertRaises(RpcDisconnected):
            yield others.call(address, "echo", 2)
        self.assertEqual(len(self.seen), 1)
