"""
The authenticated RPC channel between cluster nodes.

A connection is TLS carrying frames: a 4-byte big-endian length and a
msgpack body. As soon as TLS is up, each side sends C{[HELLO, nonce]} and
answers the peer's nonce with C{[AUTH, mac]}, a BLAKE3 MAC keyed from
C{encryption-key} over the TLS session's exporter value, the sender's role
and the peer's nonce. The exporter ties the proof to this TLS session (a
man in the middle terminates two sessions with two different values), the
role keeps a MAC from being reflected back, the nonce keeps it fresh. Until
the peer's MAC is verified, any other frame closes the connection.

After that the connection is symmetric: either side sends
C{[REQUEST, id, method, payload]} and gets C{[RESPONSE, id, ok, result]}.

A failed handshake (no proof of the key, a frame out of turn, no AUTH
within rpc-timeout, a close before authentication) is logged at most once
per peer host per L{stalwart_tw.logs.LOG_INTERVAL} (60 s), with the count of failures held
back since the last line, so a misconfigured peer that redials cannot
flood the log; the hosts are kept in a table of at most L{LOG_TABLE_MAX}
(1,000), the one logged longest ago dropped first.

L{RpcProtocol} is one connection; L{RpcServerFactory} accepts them;
L{stalwart_tw.cluster.peers.PeerConnections} dials peers.
"""

import hmac
import itertools
import os
import struct
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import msgpack
from blake3 import blake3
from OpenSSL import SSL
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener, ISystemHandle
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from stalwart_tw.logs import LogThrottle, Logger

HELLO, AUTH, REQUEST, RESPONSE = 0, 1, 2, 3
FRAME_NAMES = {HELLO: "HELLO", AUTH: "AUTH", REQUEST: "REQUEST", RESPONSE: "RESPONSE"}

NONCE_SIZE = 32
BINDING_SIZE = 32
EXPORTER_LABEL = b"EXPORTER-stalwart-tw-rpc"
AUTH_KEY_CONTEXT = "stalwart-tw 2026 rpc authentication"
# Before authentication only HELLO and AUTH (under 40 bytes) are allowed, so
# a stranger cannot make a node buffer a full-size frame.
HANDSHAKE_FRAME_MAX = 128
# Headroom above a Raft batch for the frame's envelope and entry metadata.
FRAME_OVERHEAD = 16 * 1024 * 1024
LENGTH = struct.Struct(">I")
ROLES = ("client", "server")
# Seconds between two log lines about one misbehaving address (clock time).


class RpcError(Exception):
    """
    Base of the failures an RPC call can end with.
    """


class RpcTimeout(RpcError):
    """
    No response within the call's timeout.
    """


class RpcDisconnected(RpcError):
    """
    The connection closed (or could not be made) before the response came.
    """


class RpcPeerUnavailable(RpcError):
    """
    The peer failed C{rpc-retries-max} connection attempts in a row and is
    not dialled again until gossip sees it alive.
    """


class RpcRemoteError(RpcError):
    """
    The peer answered with an error; a handler may raise it to choose the
    error name the caller sees.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class BadFrame(Exception):
    """
    A frame that is too large, does not decode, has the wrong shape, or
    comes out of order; the connection is closed.
    """


@dataclass(frozen=True)
class PeerInfo:
    """
    What a handler knows of the node that called it.

    @ivar address: C{(host, port)} of the socket's other end (for a peer that
        dialled us, an ephemeral port, not its RPC port).
    @ivar role: C{"client"} when the peer dialled us, else C{"server"}.
    """

    address: tuple
    role: str


def derive_auth_key(encryption_key) -> bytes:
    """
    The 32-byte BLAKE3 key of the handshake MAC, derived from
    C{encryption-key} (C{str} or C{bytes}) so the raw secret keys nothing.
    """
    if isinstance(encryption_key, str):
        encryption_key = encryption_key.encode("utf-8")
    return blake3(encryption_key, derive_key_context=AUTH_KEY_CONTEXT).digest()


def handshake_mac(auth_key: bytes, binding: bytes, sender_role: str, nonce: bytes) -> bytes:
    """
    The AUTH proof a side in C{sender_role} sends for the peer's C{nonce}.
    Every part has a fixed length, so the concatenation is unambiguous.
    """
    return blake3(
        binding + sender_role.encode("ascii") + nonce, key=auth_key
    ).digest()


def tls_exporter(transport) -> bytes:
    """
    The session's RFC 5705/8446 exporter value: both ends of one TLS session
    compute the same bytes, two sessions never do.
    """
    return transport.getHandle().export_keying_material(EXPORTER_LABEL, BINDING_SIZE)


def default_frame_max(settings) -> int:
    """The largest frame accepted after authentication, in bytes."""
    return FRAME_OVERHEAD + settings.raft_batch_max


def encode_frame(message) -> bytes:
    """A message as one frame: length prefix and msgpack body."""
    body = msgpack.packb(message, use_bin_type=True)
    return LENGTH.pack(len(body)) + body


def _reject_extension(code, data):
    raise ValueError(f"msgpack extension type {code}")


class FrameDecoder:
    """
    Cuts a byte stream into decoded, shape-checked messages, whatever the
    sizes of the chunks it arrives in.

    @ivar max_size: largest body accepted, in bytes; may change between
        frames.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes):
        """
        Yield each complete message in the stream so far.

        A generator, so the consumer can change C{max_size} or stop between
        frames of one chunk.

        @raise BadFrame: the next frame is too large or malformed.
        """
        self._buffer += data
        while len(self._buffer) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(self._buffer)
            if size > self.max_size:
                raise BadFrame(f"frame of {size} bytes exceeds {self.max_size}")
            end = LENGTH.size + size
            if len(self._buffer) < end:
                return
            body = bytes(self._buffer[LENGTH.size:end])
            del self._buffer[:end]
            yield decode_body(body)


def decode_body(body: bytes) -> list:
    """
    @raise BadFrame: C{body} is not msgpack or not a message.
    """
    try:
        message = msgpack.unpackb(body, raw=False, ext_hook=_reject_extension)
    except Exception as error:
        # Untrusted bytes: whatever the decoder trips on is a bad frame.
        raise BadFrame(f"undecodable frame ({type(error).__name__})") from None
    _check_shape(message)
    return message


def _check_shape(message) -> None:
    if not isinstance(message, list) or not message or type(message[0]) is not int:
        raise BadFrame("frame is not a message")
    kind = message[0]
    if kind in (HELLO, AUTH):
        if len(message) != 2 or not isinstance(message[1], bytes) or len(message[1]) != 32:
            raise BadFrame(f"malformed {FRAME_NAMES[kind]}")
    elif kind == REQUEST:
        if len(message) != 4 or type(message[1]) is not int or not isinstance(message[2], str):
            raise BadFrame("malformed REQUEST")
    elif kind == RESPONSE:
        if len(message) != 4 or type(message[1]) is not int or type(message[2]) is not bool:
            raise BadFrame("malformed RESPONSE")
        if not message[2]:
            error = message[3]
            if not (
                isinstance(error, dict)
                and isinstance(error.get("error"), str)
                and isinstance(error.get("message"), str)
            ):
                raise BadFrame("malformed error RESPONSE")
    else:
        raise BadFrame(f"unknown frame kind {kind}")


def _is_tls(transport) -> bool:
    return ISystemHandle.providedBy(transport) and isinstance(
        transport.getHandle(), SSL.Connection
    )


def format_address(address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


@implementer(IHandshakeListener)
class RpcProtocol(Protocol):
    """
    One RPC connection, either end.

    @param handlers: C{method name -> callable(peer_info, payload)} returning
        a msgpack-able value or a Deferred of one.
    @param role: C{"client"} on the dialling side, C{"server"} on the other.
    @param binding: C{callable(transport) -> 32 bytes} identifying the TLS
        session; tests over a plain transport inject a constant.
    @param handshake_failures: the L{LogThrottle} of handshake failure lines,
        shared by a node's connections; this connection's own when C{None}.
    """

    log = Logger()

    def __init__(
        self,
        settings,
        encryption_key,
        handlers: Mapping[str, Callable],
        role: str,
        clock,
        binding: Callable = tls_exporter,
        max_frame: Optional[int] = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        handshake_failures: Optional[LogThrottle] = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        self._settings = settings
        self._auth_key = derive_auth_key(encryption_key)
        self._handlers = handlers
        self._role = role
        # The peer's role, which its MAC must name.
        self._peer_role = ROLES[1 - ROLES.index(role)]
        self._clock = clock
        self._binding = binding
        # Lets one handshake failure line per peer host and interval through.
        self._handshake_failures = (
            handshake_failures if handshake_failures is not None else LogThrottle(clock))
        # Frame cap once authenticated.
        self._frame_max = max_frame if max_frame is not None else default_frame_max(settings)
        self._decoder = FrameDecoder(HANDSHAKE_FRAME_MAX)
        # Our HELLO nonce, whose MAC the peer must send back.
        self._nonce = random_bytes(NONCE_SIZE)
        # Whether our HELLO went out (TLS sends it once its handshake is done).
        self._hello_sent = False
        # The peer's HELLO nonce; None until it arrives.
        self._peer_nonce = None
        # The peer's AUTH is verified (ours went out before it could be).
        self.authenticated = False
        # A close was decided: input is ignored and nothing more is sent.
        self._closing = False
        # connectionLost has run.
        self._lost = False
        # Our calls awaiting a response: id -> (Deferred, timeout call).
        self._pending = {}
        self._call_ids = itertools.count(1)
        # Handlers of the peer's requests still running.
        self._serving = 0
        self._handshake_timer = None
        self._idle_timer = None
        # Cuts the connection if a graceful close gets no answer.
        self._close_timer = None
        self._ready_waiters = []
        self._closed_waiters = []
        # Who is at the other end; set once connected.
        self.peer = None

    # -- Twisted's side ----------------------------------------------------

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = PeerInfo((getattr(address, "host", None), getattr(address, "port", None)),
                             self._peer_role)
        self._handshake_timer = self._clock.callLater(
            self._settings.rpc_timeout / 1000.0, self._handshake_expired
        )
        # Over TLS the exporter only exists once the TLS handshake is done.
        if not _is_tls(self.transport):
            self._send_hello()

    def handshakeCompleted(self) -> None:
        if not self._closing:
            self._send_hello()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            for message in self._decoder.feed(data):
                self._touch()
                self._receive(message)
                if self._closing:
                    return
        except BadFrame as error:
            self._fail(str(error))

    def connectionLost(self, reason) -> None:
        self._lost = True
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        for timer in (self._handshake_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if not self.authenticated and not self._closing:
            self._log_handshake_failure(
                "RPC connection with {peer} closed before authentication: {reason}",
                reason.getErrorMessage(),
            )
        self._closing = True
        pending, self._pending = self._pending, {}
        for deferred, timer in pending.values():
            timer.cancel()
            deferred.errback(RpcDisconnected(f"connection with {self._peer_text()} lost"))
        ready_waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in ready_waiters:
            waiter.errback(RpcDisconnected(
                f"connection with {self._peer_text()} lost before authentication: "
                f"{reason.getErrorMessage()}"
            ))
        closed_waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in closed_waiters:
            # The exception, not the Failure, which would take the errback path.
            waiter.callback(reason.value)

    # -- our side ------------------------------------------------------------

    def when_ready(self) -> Deferred:
        """
        A Deferred firing with this protocol once both sides are
        authenticated, or failing with L{RpcDisconnected} if it closes first.
        """
        if self.authenticated and not self._closing:
            return succeed(self)
        if self._lost:
            return fail(RpcDisconnected(f"connection with {self._peer_text()} closed"))
        waiter = Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    def when_closed(self) -> Deferred:
        """A Deferred firing with the exception that ended the connection."""
        waiter = Deferred()
        if self._lost:
            waiter.callback(None)
        else:
            self._closed_waiters.append(waiter)
        return waiter

    def call(self, method: str, payload: Any, timeout: Optional[float] = None) -> Deferred:
        """
        Send a request to the peer.

        @param timeout: seconds; C{rpc-timeout} when C{None}.
        @return: a Deferred of the result, failing with L{RpcTimeout},
            L{RpcDisconnected} or L{RpcRemoteError}; cancelling it forgets
            the call.
        """
        if self._closing:
            return fail(RpcDisconnected(f"connection with {self._peer_text()} closed"))
        if not self.authenticated:
            raise RuntimeError("RPC call before the connection is authenticated")
        call_id = next(self._call_ids)
        try:
            frame = encode_frame([REQUEST, call_id, method, payload])
        except Exception:
            return fail()
        if timeout is None:
            timeout = self._settings.rpc_timeout / 1000.0
        deferred = Deferred(lambda _: self._forget(call_id))
        timer = self._clock.callLater(timeout, self._expire, call_id, method, timeout)
        self._pending[call_id] = (deferred, timer)
        self._write(frame)
        return deferred

    def close(self) -> None:
        """
        Close gracefully; pending calls fail with L{RpcDisconnected}. A peer
        that does not answer TLS's close within rpc-timeout is cut off, so
        no silent peer can hold a shutdown open.
        """
        self._closing = True
        self.transport.loseConnection()
        if not self._lost and self._close_timer is None:
            self._close_timer = self._clock.callLater(
                self._settings.rpc_timeout / 1000.0, self.transport.abortConnection
            )

    def abort(self, reason: str) -> None:
        """Close at once, logging C{reason} (once per connection)."""
        self._fail(reason)

    # -- handshake -----------------------------------------------------------

    def _send_hello(self) -> None:
        if not self._hello_sent:
            self._hello_sent = True
            self._write(encode_frame([HELLO, self._nonce]))

    def _receive(self, message: list) -> None:
        kind = message[0]
        if self.authenticated:
            if kind == REQUEST:
                self._serve(message[1], message[2], message[3])
            elif kind == RESPONSE:
                self._answer(message[1], message[2], message[3])
            else:
                raise BadFrame(f"{FRAME_NAMES[kind]} after authentication")
        elif kind == HELLO and self._peer_nonce is None:
            self._peer_nonce = message[1]
            # A HELLO racing ours must still find ours sent before our AUTH.
            self._send_hello()
            mac = handshake_mac(self._auth_key, self._binding_value(), self._role,
                                self._peer_nonce)
            self._write(encode_frame([AUTH, mac]))
        elif kind == AUTH and self._peer_nonce is not None:
            expected = handshake_mac(self._auth_key, self._binding_value(),
                                     self._peer_role, self._nonce)
            if not hmac.compare_digest(expected, message[1]):
                raise BadFrame("authentication failed (different encryption-key?)")
            self._authenticated()
        else:
            raise BadFrame(f"{FRAME_NAMES[kind]} before authentication")

    def _binding_value(self) -> bytes:
        try:
            value = self._binding(self.transport)
        except Exception as error:
            raise BadFrame(f"no TLS session binding ({error})") from None
        if not isinstance(value, bytes) or len(value) != BINDING_SIZE:
            raise BadFrame("no TLS session binding")
        return value

    def _authenticated(self) -> None:
        self.authenticated = True
        self._handshake_timer.cancel()
        self._decoder.max_size = self._frame_max
        self._idle_timer = self._clock.callLater(self._idle_seconds(), self._idle_expired)
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def _handshake_expired(self) -> None:
        self._fail(f"no authentication within {self._settings.rpc_timeout} ms")

    # -- requests ------------------------------------------------------------

    def _serve(self, call_id: int, method: str, payload: Any) -> None:
        handler = self._handlers.get(method)
        if handler is None:
            self._respond((False, {"error": "unknownMethod", "message": method}), call_id)
            return
        self._serving += 1
        outcome = maybeDeferred(handler, self.peer, payload)
        outcome.addCallbacks(lambda result: (True, result), self._handler_failed,
                             errbackArgs=(method,))
        outcome.addCallback(self._handler_done, call_id)

    def _handler_failed(self, failure, method: str) -> tuple:
        if failure.check(RpcRemoteError):
            error = failure.value
            return False, {"error": error.name, "message": error.message}
        self.log.failure("RPC handler {method} failed", failure, method=method)
        return False, {"error": "serverFail", "message": failure.getErrorMessage()}

    def _handler_done(self, outcome: tuple, call_id: int) -> None:
        self._serving -= 1
        self._respond(outcome, call_id)

    def _respond(self, outcome: tuple, call_id: int) -> None:
        if self._closing:
            return
        ok, result = outcome
        try:
            frame = encode_frame([RESPONSE, call_id, ok, result])
        except Exception as error:
            self.log.error("RPC result cannot be encoded: {error}", error=error)
            frame = encode_frame([RESPONSE, call_id, False,
                                  {"error": "serverFail", "message": "unencodable result"}])
        self._write(frame)

    def _answer(self, call_id: int, ok: bool, result: Any) -> None:
        entry = self._pending.pop(call_id, None)
        if entry is None:
            # Timed out or cancelled already: the late answer has no taker.
            return
        deferred, timer = entry
        timer.cancel()
        if ok:
            deferred.callback(result)
        else:
            deferred.errback(RpcRemoteError(result["error"], result["message"]))

    def _expire(self, call_id: int, method: str, timeout: float) -> None:
        deferred, _ = self._pending.pop(call_id)
        deferred.errback(RpcTimeout(
            f"{method} to {self._peer_text()} unanswered after {timeout:g} s"
        ))

    def _forget(self, call_id: int) -> None:
        entry = self._pending.pop(call_id, None)
        if entry is not None:
            entry[1].cancel()

    # -- plumbing ------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        self._touch()
        self.transport.write(frame)

    def _touch(self) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self._idle_seconds())

    def _idle_seconds(self) -> float:
        return self._settings.rpc_inactivity_timeout / 1000.0

    def _idle_expired(self) -> None:
        # A slow handler or a long call is not idleness.
        if self._pending or self._serving:
            self._idle_timer = self._clock.callLater(self._idle_seconds(), self._idle_expired)
            return
        self.log.debug("Closing idle RPC connection with {peer}", peer=self._peer_text())
        self.close()

    def _fail(self, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        if self.authenticated:
            self.log.warn("Closing RPC connection with {peer}: {reason}",
                          peer=self._peer_text(), reason=reason)
        else:
            self._log_handshake_failure("Closing RPC connection with {peer}: {reason}", reason)
        self.transport.abortConnection()

    def _log_handshake_failure(self, text: str, reason: str) -> None:
        # By host: a peer that dials us comes from a new port every time.
        host = None if self.peer is None else self.peer.address[0]
        count = self._handshake_failures.admit(host)
        if count is None:
            self.log.debug(text, peer=self._peer_text(), reason=reason)
            return
        self.log.warn(text + " ({count} failed handshakes from {host} since the last line)",
                      peer=self._peer_text(), reason=reason, count=count, host=host)

    def _peer_text(self) -> str:
        if self.peer is None:
            return "(not connected)"
        return format_address(self.peer.address)


class RpcServerFactory(Factory):
    """
    Accepts RPC connections and serves C{handlers} on them.

    @param reactor: also the clock of the timeouts.
    @param handshake_failures: a L{LogThrottle} to share with the node's
        dialler, so a peer failing both ways is still one line an interval.
    """

    # Twisted's "Starting factory" lines say nothing an admin needs.
    noisy = False

    def __init__(self, settings, encryption_key, handlers, reactor=None,
                 binding: Callable = tls_exporter, max_frame: Optional[int] = None,
                 handshake_failures: Optional[LogThrottle] = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        # Shared by every accepted connection (and the node's dialler).
        self._handshake_failures = (
            handshake_failures if handshake_failures is not None else LogThrottle(reactor))
        self._settings = settings
        self._encryption_key = encryption_key
        self._handlers = handlers
        self._binding = binding
        self._max_frame = max_frame
        # Accepted connections not yet lost.
        self.connections = set()

    def buildProtocol(self, addr) -> RpcProtocol:
        protocol = RpcProtocol(self._settings, self._encryption_key, self._handlers,
                               "server", self._reactor, self._binding, self._max_frame,
                               handshake_failures=self._handshake_failures)
        protocol.factory = self
        self.connections.add(protocol)
        protocol.when_closed().addCallback(lambda _: self.connections.discard(protocol))
        return protocol

    def close(self) -> Deferred:
        """Close every accepted connection; fires once they are all lost."""
        closed = [protocol.when_closed() for protocol in self.connections]
        for protocol in list(self.connections):
            protocol.close()
        return DeferredList(closed)


def listen_rpc(reactor, settings, factory, tls_server=None) -> Deferred:
    """
    Listen for RPC on C{rpc-bind-addr}:C{rpc-port}.

    @param tls_server: server TLS options; from L{stalwart_tw.cluster.tls.rpc_tls}
        when C{None}.
    @return: a Deferred of the listening port.
    """
    if tls_server is None:
        from stalwart_tw.cluster.tls import rpc_tls

        tls_server = rpc_tls(settings).server
    endpoint = SSL4ServerEndpoint(reactor, settings.rpc_port, tls_server,
                                  interface=settings.rpc_bind_addr)
    return endpoint.listen(factory)


