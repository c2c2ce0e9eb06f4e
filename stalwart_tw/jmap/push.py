"""
Push: the state-change bus and the EventSource stream (RFC 8620 section 7).

Every applied batch reaches L{StateChangeBus.publish} (the node calls it as a
listener). The bus turns the batch's new modseqs into JMAP state strings,
per account and type, and hands each subscriber the part about the accounts
it subscribed to. EventSource streams, WebSocket push and PushSubscription
delivery are subscribers; the bus knows nothing of HTTP.

Only states travel, never data: a StateChange says "Email in account A is
now at state 1f", and the client fetches what changed with /changes, through
the same access checks as any other read. So a push channel can lose events
without harm (the next one, or the next sync, catches up), and nothing that
leaks through it is more than a counter.

The bus never waits for a client. A subscriber only merges the news into what
it has not sent yet and, at most, schedules a call on the clock; the bytes are
written later, outside the commit's callback chain. Writes to a Twisted
request are buffered, never blocking, and throttling bounds what a slow or
stuck client costs: at most one state event per C{event-source-throttle}
(default 1,000 ms). Changes that arrive sooner are merged, the later state
winning per account and type (states only move forward, so the merged event
says exactly what the client needs to know), and go out together once the
interval has passed. A flood of commits is one event per interval, not one
per commit.

The stream sends no event ids and ignores Last-Event-ID: an id that encodes
every state the user can see would have to be rebuilt on each event, and a
reconnecting client resynchronises with /changes anyway, which the spec
allows (the ids are a SHOULD).

Query parameters (RFC 8620 section 7.3): C{types} (comma-separated type
names or C{*}), C{closeafter} (C{state} or C{no}) and C{ping} (seconds
between pings, 0 for none). A ping goes out whenever the interval elapses
since the previous event, state events included, and reports the interval
in use; we clamp requests to 1..3,600 seconds (the spec forbids a minimum
above 30 or a maximum below 300). Anything malformed is refused (the route
answers 400) rather than guessed at: a client with a broken URL learns at
once instead of waiting for events that never come.
"""

from dataclasses import dataclass

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from stalwart_tw.jmap.session import account_id
from stalwart_tw.logs import Logger
from stalwart_tw.store.changes import encode_state

PING_MIN_SECONDS = 1
PING_MAX_SECONDS = 3600

# Sent as soon as the stream starts, so that a browser's fetch() or
# EventSource sees the response open before the first event.
OPENING = b": stalwart event source\n\n"


class _Subscription:
    """
    One subscriber of the bus.
    """

    __slots__ = ("accounts", "active", "callback")

    def __init__(self, accounts, callback):
        # The account numbers whose changes the subscriber receives.
        self.accounts = accounts
        # Called with {jmap account id: {type name: state}}.
        self.callback = callback
        # False once unsubscribed: a publish already under way skips it.
        self.active = True


class StateChangeBus:
    """
    Fans the type states of applied batches out to subscribers, each getting
    only the accounts it subscribed to.
    """

    log = Logger()

    def __init__(self):
        # Account number -> its subscriptions, in subscription order (a dict
        # used as an ordered set).
        self._by_account = {}

    def subscription_count(self):
        """
        @return: the number of active subscriptions.
        """
        return len({s for subs in self._by_account.values() for s in subs})

    def subscribe(self, account_ids, callback):
        """
        Call C{callback(changed)} whenever a batch changes one of the
        accounts in C{account_ids}, with C{changed} mapping the JMAP id of
        each such account to C{{type name: state string}}; other accounts
        are left out. The callback should be quick: it runs in the commit's
        callback chain.

        @param account_ids: account numbers (principal ids).
        @return: a callable that ends the subscription (calling it again
            does nothing).
        """
        subscription = _Subscription(frozenset(account_ids), callback)
        for number in subscription.accounts:
            self._by_account.setdefault(number, {})[subscription] = None

        def unsubscribe():
            if not subscription.active:
                return
            subscription.active = False
            for number in subscription.accounts:
                subscriptions = self._by_account.get(number)
                if subscriptions is not None:
                    subscriptions.pop(subscription, None)
                    if not subscriptions:
                        del self._by_account[number]

        return unsubscribe

    def publish(self, apply_result):
        """
        Tell the subscribers what an applied batch changed: the node's
        listener (C{node.add_listener(bus.publish)}).

        A subscriber that raises is logged; the others still hear the news.

        @param apply_result: an L{ApplyResult}; its C{type_states} maps
            account number -> {type name -> new modseq}.
        """
        if not apply_result.applied or not apply_result.type_states:
            return
        reached = {}
        for number, type_modseqs in apply_result.type_states.items():
            subscriptions = self._by_account.get(number)
            if not subscriptions:
                continue
            jmap_id = account_id(number)
            states = {name: encode_state(modseq) for name, modseq in type_modseqs.items()}
            for subscription in subscriptions:
                # Each subscriber gets its own dicts: one that keeps or edits
                # them cannot change what the others see.
                reached.setdefault(subscription, {})[jmap_id] = dict(states)
        for subscription, changed in reached.items():
            if not subscription.active:
                # Unsubscribed by an earlier callback of this very publish.
                continue
            try:
                subscription.callback(changed)
            except Exception:
                self.log.failure(
                    "a state-change subscriber failed on batch {index}",
                    index=apply_result.index,
                )


@dataclass(frozen=True)
class EventSourceOptions:
    """
    What a client asked of its event stream.

    @ivar types: the type names to report, or C{None} for all (C{*}).
    @ivar close_after_state: end the response after the first state event.
    @ivar ping_seconds: seconds between pings, 0 for none; already clamped.
    """

    types: frozenset = None
    close_after_state: bool = False
    ping_seconds: int = 0


def _single(args, name):
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise ValueError(f"{name} is given more than once")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not UTF-8") from None


def _parse_types(text):
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    names = [name for name in names if name]
    if not names:
        raise ValueError("types names no type; use * for all")
    if "*" in names:
        return None
    return frozenset(names)


def _parse_ping(text):
    if text is None:
        return 0
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"ping must be a whole number of seconds, not {text!r}")
    if len(text) > 9:
        # Far above the maximum; spares converting a huge number.
        return PING_MAX_SECONDS
    seconds = int(text)
    if seconds == 0:
        return 0
    return min(max(seconds, PING_MIN_SECONDS), PING_MAX_SECONDS)


class SharedStateBus:
    """
    A view of a L{StateChangeBus} that also tells every subscriber of the
    state of types kept once for the whole server. Principals are the
    directory's, logged under account 0, yet each account that has the
    principals capability has a Principal state: a change to the directory
    is announced under each account the subscriber watches.

    @param shared: account number -> the type names it holds for everyone.
    """

    def __init__(self, bus, shared):
        self._bus = bus
        self._shared = {account_id(number): set(types) for number, types in shared.items()}
        self._shared_numbers = tuple(shared)

    def subscribe(self, account_ids, callback):
        own = [account_id(number) for number in account_ids]

        def translate(changed):
            result = {jmap_id: dict(types) for jmap_id, types in changed.items()
                      if jmap_id in own}
            for shared_id, type_names in self._shared.items():
                states = {name: state for name, state in changed.get(shared_id, {}).items()
                          if name in type_names}
                if states:
                    for jmap_id in own:
                        result.setdefault(jmap_id, {}).update(states)
            if result:
                callback(result)

        return self._bus.subscribe((*account_ids, *self._shared_numbers), translate)


def parse_eventsource_query(args):
    """
    Read the EventSource query parameters; missing ones take the spec's
    defaults (C{types=*}, C{closeafter=no}, C{ping=0}), unknown ones are
    ignored.

    @param args: Twisted's C{request.args}, bytes -> list of bytes.
    @return: an L{EventSourceOptions}.
    @raise ValueError: a parameter is malformed; the message, one line,
        says which and why.
    """
    close_after = _single(args, "closeafter")
    if close_after not in (None, "state", "no"):
        raise ValueError(f"closeafter must be state or no, not {close_after!r}")
    return EventSourceOptions(
        types=_parse_types(_single(args, "types")),
        close_after_state=close_after == "state",
        ping_seconds=_parse_ping(_single(args, "ping")),
    )


class ChangeCoalescer:
    """
    Merges state changes and hands them on at most once per interval.

    The first change after a quiet interval goes out on the next turn of
    the clock; changes that come sooner wait for the interval to pass and
    go out merged, the later state winning per account and type.
    """

    def __init__(self, clock, interval_seconds, send):
        """
        @param clock: an L{IReactorTime}.
        @param interval_seconds: the least time between two sends.
        @param send: called with {jmap account id: {type: state}}.
        """
        self._clock = clock
        self._interval = max(0.0, interval_seconds)
        self._send = send
        # Changes not yet sent, merged: jmap account id -> {type: state}.
        self._pending = {}
        # Clock time of the last send; None before the first.
        self._last_sent = None
        # The DelayedCall that will send the pending changes, if scheduled.
        self._call = None
        # False once closed: nothing more is sent.
        self._open = True

    def add(self, changed):
        """
        Merge C{changed} into what is pending and make sure it goes out.
        """
        if not self._open:
            return
        for jmap_id, states in changed.items():
            self._pending.setdefault(jmap_id, {}).update(states)
        if self._call is not None:
            return
        now = self._clock.seconds()
        delay = 0 if self._last_sent is None else self._last_sent + self._interval - now
        self._call = self._clock.callLater(max(0, delay), self._flush)

    def _flush(self):
        self._call = None
        if not self._open or not self._pending:
            return
        changed, self._pending = self._pending, {}
        self._last_sent = self._clock.seconds()
        self._send(changed)

    def close(self):
        """
        Drop what is pending and send nothing more.
        """
        self._open = False
        self._pending = {}
        if self._call is not None:
            self._call.cancel()
            self._call = None


def _event(name, document):
    # orjson escapes every newline inside strings, so the document is one
    # data line and cannot end the event early.
    return b"event: " + name + b"\ndata: " + orjson.dumps(document) + b"\n\n"


class EventSourceStream:
    """
    One client's C{text/event-stream} response: state events for the
    accounts it may see, pings, and the end of the response when the client
    leaves or, with C{closeafter=state}, after the first state event.
    """

    log = Logger()

    def __init__(self, request, bus, account_ids, options, throttle_ms=1000, clock=None):
        """
        @param request: the Twisted request to answer.
        @param bus: the L{StateChangeBus}.
        @param account_ids: the account numbers the client may see.
        @param options: the client's L{EventSourceOptions}.
        @param throttle_ms: the least time between two state events
            (the event-source-throttle setting).
        @param clock: an L{IReactorTime}; the reactor when C{None}.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self._request = request
        self._bus = bus
        self._account_ids = frozenset(account_ids)
        self._options = options
        self._clock = clock
        self._coalescer = ChangeCoalescer(clock, throttle_ms / 1000.0, self._send_state)
        # The bus subscription's end, once subscribed.
        self._unsubscribe = None
        # The LoopingCall sending pings, when the client asked for them.
        self._ping = None
        # True from start() until the stream ends, whoever ends it.
        self._open = False
        # Fires with None when the stream has ended; cancelling it ends it.
        self._done = Deferred(lambda _: self.stop())

    def start(self):
        """
        Open the stream: headers, the opening comment, the subscription, the
        pings. Call it once, on a request that is still connected.

        @return: a Deferred that fires with C{None} when the stream has
            ended (the client left, or the server finished the response);
            a route can return it. Cancelling it ends the stream.
        """
        if self._open or self._done.called:
            raise RuntimeError("the stream has already been started")
        self._open = True
        # Both outcomes end the stream: callback when the response was
        # finished, errback when the client went away first.
        self._request.notifyFinish().addBoth(self._request_ended)
        if not self._open:
            return self._done
        request = self._request
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        # Tells nginx-style proxies not to hold the events back.
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.write(OPENING)
        self._unsubscribe = self._bus.subscribe(self._account_ids, self._changed)
        if self._options.ping_seconds > 0:
            self._ping = LoopingCall(self._send_ping)
            self._ping.clock = self._clock
            self._ping.start(self._options.ping_seconds, now=False).addErrback(
                lambda failure: self.log.failure("the ping loop failed", failure)
            )
        return self._done

    def stop(self):
        """
        End the stream from the server's side (a shutdown, say): finish the
        response if the client is still there.
        """
        if not self._open:
            return
        self._teardown()
        try:
            self._request.finish()
        except RuntimeError:
            # The connection was lost and we have not heard yet: nothing to
            # finish.
            pass
        self._fire_done()

    def _changed(self, changed):
        types = self._options.types
        if types is not None:
            changed = {
                jmap_id: kept
                for jmap_id, states in changed.items()
                if (kept := {name: state for name, state in states.items() if name in types})
            }
        if changed:
            self._coalescer.add(changed)

    def _send_state(self, changed):
        self._write(_event(b"state", {"@type": "StateChange", "changed": changed}))
        if self._options.close_after_state:
            self.stop()
        elif self._ping is not None and self._ping.running:
            # Pings measure the time since the previous event of any kind.
            self._ping.reset()

    def _send_ping(self):
        self._write(_event(b"ping", {"interval": self._options.ping_seconds}))

    def _write(self, data):
        # After the client left (or the response was finished), writing is a
        # silent no-op.
        if self._open:
            self._request.write(data)

    def _request_ended(self, _result):
        # The response is over: finished (by us or anyone) or disconnected.
        # Returning None swallows the disconnection's failure.
        self._teardown()
        self._fire_done()

    def _teardown(self):
        self._open = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._ping is not None:
            if self._ping.running:
                self._ping.stop()
            self._ping = None
        self._coalescer.close()

    def _fire_done(self):
        if not self._done.called:
            self._done.callback(None)
