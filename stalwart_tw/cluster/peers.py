"""
Dialling cluster peers: one RPC connection per peer address, opened when a
call needs it, redialled with truncated exponential backoff (with jitter)
after a failure, given up after rpc-retries-max failures until gossip says
the peer is alive again, and closed after rpc-inactivity-timeout idle.
Gossip drops the link of a peer it forgets (offline for a day, see
L{stalwart_tw.cluster.gossip.FORGET_AFTER}).
"""

import random as _random
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.protocol import Factory

from stalwart_tw.cluster.rpc import (
    RpcDisconnected,
    RpcPeerUnavailable,
    RpcProtocol,
    RpcTimeout,
    format_address,
    tls_exporter,
)
from stalwart_tw.logs import LogThrottle, Logger

CONNECTED = "connected"
CONNECTING = "connecting"
BACKOFF = "backoff"
UNREACHABLE = "unreachable"
IDLE = "idle"


def backoff_delay(failures: int, backoff_max_ms: int, random) -> float:
    """
    Seconds to wait before dialling again after C{failures} consecutive
    failed attempts: 100 ms doubling per failure, truncated at
    C{backoff_max_ms}, times a jitter in [0.5, 1) so peers do not redial in
    step.
    """
    # The exponent is capped only to keep the float finite.
    base = min(backoff_max_ms / 1000.0, 0.1 * 2 ** min(failures - 1, 64))
    return base * random.uniform(0.5, 1.0)


class _QueuedCall:
    """A call waiting for its peer's connection to be authenticated."""

    def __init__(self, method, payload, deadline):
        self.method = method
        self.payload = payload
        # Clock time after which the call fails with RpcTimeout.
        self.deadline = deadline
        self.deferred = None
        self.timer = None
        # The call on the protocol once sent; cancellation goes there.
        self.sent = None


class _ClientFactory(Factory):
    noisy = False

    def __init__(self, build):
        self._build = build

    def buildProtocol(self, addr):
        return self._build()


class PeerConnections:
    """
    A node's outgoing RPC connections, one per peer address, dialled when a
    call needs one.

    Not a C{ClientService}: that redials forever and after every loss,
    where a peer here is dialled only on demand, forgotten when idle, and
    given up after C{rpc-retries-max} failures until gossip vouches for it.

    @param tls_client: client TLS options (see L{stalwart_tw.cluster.tls}).
    @param handlers: served to peers that call back over our connections.
    @param clock: the clock of timeouts and backoff; C{reactor} when C{None}.
    @param random: the jitter's source (C{uniform}); seed it in tests.
    @param endpoint_for: C{(host, port) -> IStreamClientEndpoint}; TLS over
        TCP by default.
    @param handshake_failures: the L{LogThrottle} of handshake failure lines
        (shared with the node's RPC server); one of its own when C{None}.
    """

    log = Logger()

    def __init__(self, settings, encryption_key, tls_client, handlers=None, reactor=None,
                 clock=None, random=None, binding: Callable = tls_exporter,
                 max_frame: Optional[int] = None, endpoint_for=None,
                 handshake_failures: Optional[LogThrottle] = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._random = random if random is not None else _random.SystemRandom()
        self._settings = settings
        self._encryption_key = encryption_key
        self._tls_client = tls_client
        self._handlers = handlers or {}
        self._binding = binding
        self._max_frame = max_frame
        self._endpoint_for = endpoint_for or self._tls_endpoint
        self._handshake_failures = (
            handshake_failures if handshake_failures is not None else LogThrottle(self._clock))
        # (host, port) -> _PeerLink, made by the first call to the address.
        self._links = {}
        self._stopped = False

    def call(self, address: tuple, method: str, payload: Any,
             timeout: Optional[float] = None) -> Deferred:
        """
        Call C{method} on the peer at C{address} = C{(host, port)}.

        @param timeout: seconds, counted from now (waiting for the
            connection included); C{rpc-timeout} when C{None}.
        @return: a Deferred of the result, failing with L{RpcTimeout},
            L{RpcDisconnected}, L{RpcRemoteError} or L{RpcPeerUnavailable}.
        """
        if self._stopped:
            return fail(RpcDisconnected("RPC connections are closed"))
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _PeerLink(self, address)
        return link.call(method, payload, timeout)

    def state(self, address: tuple) -> str:
        """
        One of C{"connected"}, C{"connecting"}, C{"backoff"},
        C{"unreachable"} (given up until L{peer_alive}) or C{"idle"}.
        """
        link = self._links.get(address)
        return IDLE if link is None else link.state

    def peer_alive(self, address: tuple) -> None:
        """
        Gossip sees the peer alive: a peer given up on may be dialled again.
        Harmless to call often; it does not shorten a backoff in progress.
        """
        link = self._links.get(address)
        if link is not None:
            link.revive()

    def forget(self, address: tuple) -> None:
        """
        Gossip forgot the peer: close its connection, fail its waiting calls
        and drop its link; a later call dials afresh.
        """
        link = self._links.pop(address, None)
        if link is not None:
            link.stop()

    def close(self) -> Deferred:
        """
        Close every connection, stop dialling, fail waiting calls.

        @return: a Deferred firing once every connection is lost.
        """
        self._stopped = True
        closed = [link.stop() for link in self._links.values()]
        return DeferredList([d for d in closed if d is not None])

    def _tls_endpoint(self, address):
        host, port = address
        return SSL4ClientEndpoint(self._reactor, host, port, self._tls_client,
                                  timeout=self._settings.rpc_timeout / 1000.0)

    def _new_protocol(self) -> RpcProtocol:
        return RpcProtocol(self._settings, self._encryption_key, self._handlers, "client",
                           self._clock, self._binding, self._max_frame,
                           handshake_failures=self._handshake_failures)


class _PeerLink:
    """The connection to one peer and the calls waiting for it."""

    log = Logger()

    def __init__(self, owner: PeerConnections, address: tuple) -> None:
        self._owner = owner
        self._clock = owner._clock
        self._settings = owner._settings
        self.address = address
        # One of the state names of PeerConnections.state.
        self.state = IDLE
        # Consecutive failed connection attempts.
        self.failures = 0
        # The authenticated connection, when CONNECTED.
        self.protocol = None
        # The connection being authenticated, while CONNECTING.
        self._attempt_protocol = None
        # The endpoint's connect, while CONNECTING and not yet connected.
        self._attempt = None
        # Gives up the attempt after rpc-timeout.
        self._attempt_timer = None
        # Redials, while in BACKOFF.
        self._backoff_timer = None
        # Calls waiting for the connection, oldest first.
        self._queue = []
        # Stopped (closed or forgotten): a failing attempt schedules no redial.
        self._stopped = False

    def call(self, method, payload, timeout):
        if self.state == UNREACHABLE:
            return fail(RpcPeerUnavailable(
                f"{format_address(self.address)} failed {self.failures} connection "
                f"attempts; waiting for gossip to see it alive"
            ))
        if timeout is None:
            timeout = self._settings.rpc_timeout / 1000.0
        if self.state == CONNECTED:
            return self.protocol.call(method, payload, timeout)
        queued = _QueuedCall(method, payload, self._clock.seconds() + timeout)
        queued.deferred = Deferred(lambda _: self._cancel_queued(queued))
        queued.timer = self._clock.callLater(timeout, self._queued_expired, queued, timeout)
        self._queue.append(queued)
        if self.state == IDLE:
            self._dial()
        return queued.deferred

    def revive(self) -> None:
        if self.state == UNREACHABLE:
            self.state = IDLE
            self.failures = 0

    def stop(self) -> Optional[Deferred]:
        self._stopped = True
        for timer in (self._attempt_timer, self._backoff_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._fail_queue(RpcDisconnected("RPC connections are closed"))
        if self._attempt is not None:
            self._attempt.cancel()
        protocol = self.protocol or self._attempt_protocol
        self.state = IDLE
        if protocol is None:
            return None
        closed = protocol.when_closed()
        protocol.close()
        return closed

    # -- dialling ------------------------------------------------------------

    def _dial(self) -> None:
        self.state = CONNECTING
        self._backoff_timer = None
        self._attempt_timer = self._clock.callLater(
            self._settings.rpc_timeout / 1000.0, self._attempt_expired
        )
        endpoint = self._owner._endpoint_for(self.address)
        self._attempt = endpoint.connect(_ClientFactory(self._owner._new_protocol))
        self._attempt.addCallbacks(self._transport_connected, self._attempt_failed)

    def _transport_connected(self, protocol: RpcProtocol) -> None:
        self._attempt = None
        self._attempt_protocol = protocol
        protocol.when_ready().addCallbacks(self._ready, self._attempt_failed)

    def _attempt_expired(self) -> None:
        reason = f"not authenticated within {self._settings.rpc_timeout} ms"
        if self._attempt_protocol is not None:
            self._attempt_protocol.abort(reason)
        elif self._attempt is not None:
            self._attempt.cancel()

    def _attempt_failed(self, failure) -> None:
        if self._stopped:
            return
        if self._attempt_timer.active():
            self._attempt_timer.cancel()
        self._attempt = self._attempt_protocol = None
        self.failures += 1
        message = failure.getErrorMessage()
        limit = max(1, self._settings.rpc_retries_max)
        if self.failures >= limit:
            self.state = UNREACHABLE
            self.log.warn(
                "RPC peer {peer} failed {failures} connection attempts; "
                "not dialled again until gossip sees it alive ({reason})",
                peer=format_address(self.address), failures=self.failures, reason=message,
            )
        else:
            self.state = BACKOFF
            delay = backoff_delay(self.failures, self._settings.rpc_backoff_max,
                                  self._owner._random)
            self.log.debug("RPC peer {peer} unreachable ({reason}); retry in {delay:.3f} s",
                           peer=format_address(self.address), reason=message, delay=delay)
            self._backoff_timer = self._clock.callLater(delay, self._dial)
        # Last: the callers' callbacks must see the link in its new state.
        self._fail_queue(RpcDisconnected(
            f"could not connect to {format_address(self.address)}: {message}"
        ))

    def _ready(self, protocol: RpcProtocol) -> None:
        self._attempt_timer.cancel()
        self._attempt_protocol = None
        self.protocol = protocol
        self.state = CONNECTED
        self.failures = 0
        protocol.when_closed().addCallback(self._closed, protocol)
        queue, self._queue = self._queue, []
        now = self._clock.seconds()
        for queued in queue:
            queued.timer.cancel()
            queued.sent = protocol.call(queued.method, queued.payload,
                                        max(0.0, queued.deadline - now))
            queued.sent.chainDeferred(queued.deferred)

    def _closed(self, reason, protocol: RpcProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self.state = IDLE

    # -- waiting calls -------------------------------------------------------

    def _queued_expired(self, queued: _QueuedCall, timeout: float) -> None:
        self._queue.remove(queued)
        queued.deferred.errback(RpcTimeout(
            f"{queued.method} to {format_address(self.address)}: no connection "
            f"within {timeout:g} s"
        ))

    def _cancel_queued(self, queued: _QueuedCall) -> None:
        if queued.sent is not None:
            queued.sent.cancel()
        else:
            queued.timer.cancel()
            self._queue.remove(queued)

    def _fail_queue(self, error: Exception) -> None:
        queue, self._queue = self._queue, []
        for queued in queue:
            queued.timer.cancel()
            queued.deferred.errback(error)
