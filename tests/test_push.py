"""
Tests for the state-change bus and the EventSource stream.
"""

import orjson
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from stalwart_tw.jmap.push import (
    PING_MAX_SECONDS,
    ChangeCoalescer,
    EventSourceOptions,
    EventSourceStream,
    StateChangeBus,
    parse_eventsource_query,
)
from stalwart_tw.jmap.session import account_id
from stalwart_tw.store.batch import ApplyResult, WriteBatch
from stalwart_tw.store.changes import encode_state
from tests.support import open_store_and_node


def applied(type_states, index=1):
    """An ApplyResult of a batch that changed C{type_states}."""
    return ApplyResult(index=index, type_states=type_states)


def events(request):
    """
    The events written to a request, as (name, decoded data) pairs; comments
    are skipped.
    """
    text = b"".join(request.written).decode("utf-8")
    parsed = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":")
        )
        if fields:
            parsed.append((fields["event"], orjson.loads(fields["data"])))
    return parsed


class StateChangeBusTests(SynchronousTestCase):
    """
    The bus hands each subscriber the changes of its accounts.
    """

    def setUp(self):
        self.bus = StateChangeBus()

    def test_reaches_only_subscribers_of_the_account(self):
        """A change to an account reaches its subscribers and no one else."""
        seven, eight = [], []
        self.bus.subscribe([7], seven.append)
        self.bus.subscribe([8], eight.append)
        self.bus.publish(applied({7: {"Email": 10}}))
        self.assertEqual(seven, [{account_id(7): {"Email": encode_state(10)}}])
        self.assertEqual(eight, [])

    def test_only_subscribed_accounts_are_delivered(self):
        """A subscriber of some accounts hears only about those, in one call."""
        heard = []
        self.bus.subscribe([1, 2], heard.append)
        self.bus.publish(applied({1: {"Email": 3}, 2: {"Mailbox": 4}, 3: {"Email": 5}}))
        self.assertEqual(
            heard,
            [
                {
                    account_id(1): {"Email": encode_state(3)},
                    account_id(2): {"Mailbox": encode_state(4)},
                }
            ],
        )

    def test_unsubscribe(self):
        """After unsubscribing, a subscriber hears nothing; a second call is harmless."""
        heard = []
        unsubscribe = self.bus.subscribe([1, 2], heard.append)
        self.assertEqual(self.bus.subscription_count(), 1)
        unsubscribe()
        unsubscribe()
        self.bus.publish(applied({1: {"Email": 3}, 2: {"Email": 3}}))
        self.assertEqual(heard, [])
        self.assertEqual(self.bus.subscription_count(), 0)

    def test_raising_subscriber_is_logged_and_others_still_hear(self):
        """A subscriber that raises is logged and the subscribers after it are called."""
        before, after = [], []
        self.bus.subscribe([1], before.append)
        self.bus.subscribe([1], lambda changed: 1 / 0)
        self.bus.subscribe([1], after.append)
        self.bus.publish(applied({1: {"Email": 2}}))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(len(before), 1)
        self.assertEqual(len(after), 1)

    def test_subscribers_get_their_own_dicts(self):
        """A subscriber that edits what it got does not change what the next one sees."""
        heard = []
        self.bus.subscribe([1], lambda changed: changed[account_id(1)].clear())
        self.bus.subscribe([1], heard.append)
        self.bus.publish(applied({1: {"Email": 2}}))
        self.assertEqual(heard, [{account_id(1): {"Email": encode_state(2)}}])

    def test_unsubscribed_during_publish_is_skipped(self):
        """A subscription ended by an earlier callback of the same publish is not called."""
        heard = []
        unsubscribe_second = []
        self.bus.subscribe([1], lambda changed: unsubscribe_second[0]())
        unsubscribe_second.append(self.bus.subscribe([1], heard.append))
        self.bus.publish(applied({1: {"Email": 2}}))
        self.assertEqual(heard, [])

    def test_unapplied_batch_is_not_published(self):
        """A batch skipped for a conflict publishes nothing."""
        heard = []
        self.bus.subscribe([1], heard.append)
        self.bus.publish(ApplyResult(index=1, conflicts=(1,), type_states={1: {"Email": 2}}))
        self.assertEqual(heard, [])

    def test_directory_account(self):
        """Account 0, the directory, is published under its own account id."""
        heard = []
        self.bus.subscribe([0], heard.append)
        self.bus.publish(applied({0: {"Principal": 1}}))
        self.assertEqual(heard, [{account_id(0): {"Principal": encode_state(1)}}])


class NodeBusTests(TestCase):
    """
    The bus as the node's listener, on a real store.
    """

    @inlineCallbacks
    def test_commit_publishes_states(self):
        """Committing a batch publishes the new state of each type it changed."""
        _store, node = yield open_store_and_node(self)
        bus = StateChangeBus()
        node.add_listener(bus.publish)
        heard = []
        bus.subscribe([5], heard.append)
        batch = WriteBatch().log_change(5, "Email", "e1", "created")
        result = yield node.commit(batch)
        modseq = result.type_states[5]["Email"]
        self.assertEqual(heard, [{account_id(5): {"Email": encode_state(modseq)}}])


def query(**params):
    """request.args for C{params}."""
    return {name.encode(): [value.encode()] for name, value in params.items()}


class ParseEventSourceQueryTests(SynchronousTestCase):
    """
    parse_eventsource_query reads types, closeafter and ping.
    """

    def test_defaults(self):
        """Missing parameters take the spec's defaults: all types, no close, no ping."""
        self.assertEqual(parse_eventsource_query({}), EventSourceOptions(None, False, 0))

    def test_types(self):
        """A comma-separated list gives those types; * gives all."""
        options = parse_eventsource_query(query(types="Email, Mailbox,"))
        self.assertEqual(options.types, frozenset({"Email", "Mailbox"}))
        self.assertIsNone(parse_eventsource_query(query(types="*")).types)

    def test_empty_types_refused(self):
        """An empty types list is refused rather than a stream that never speaks."""
        self.assertRaises(ValueError, parse_eventsource_query, query(types=" , "))

    def test_closeafter(self):
        """closeafter=state closes after a state event; closeafter=no does not."""
        self.assertTrue(parse_eventsource_query(query(closeafter="state")).close_after_state)
        self.assertFalse(parse_eventsource_query(query(closeafter="no")).close_after_state)

    def test_closeafter_other_refused(self):
        """closeafter other than state or no is a ValueError naming the parameter."""
        error = self.assertRaises(ValueError, parse_eventsource_query, query(closeafter="maybe"))
        self.assertIn("closeafter", str(error))

    def test_ping(self):
        """ping is a number of seconds; 0 means none."""
        self.assertEqual(parse_eventsource_query(query(ping="300")).ping_seconds, 300)
        self.assertEqual(parse_eventsource_query(query(ping="0")).ping_seconds, 0)

    def test_ping_clamped(self):
        """A huge ping is clamped to the maximum."""
        for text in ["3601", "99999999", "1" * 50]:
            options = parse_eventsource_query(query(ping=text))
            self.assertEqual(options.ping_seconds, PING_MAX_SECONDS)

    def test_ping_malformed_refused(self):
        """A ping that is not a non-negative whole number is a ValueError."""
        for text in ["abc", "-5", "+5", "1.5", "", " 5", "\u0665"]:
            self.assertRaises(ValueError, parse_eventsource_query, query(ping=text))

    def test_repeated_or_undecodable_refused(self):
        """A parameter given twice, or not in UTF-8, is a ValueError."""
        self.assertRaises(ValueError, parse_eventsource_query, {b"ping": [b"1", b"2"]})
        self.assertRaises(ValueError, parse_eventsource_query, {b"types": [b"\xff"]})

    def test_unknown_ignored(self):
        """Unknown parameters, such as a cache buster, are ignored."""
        self.assertEqual(parse_eventsource_query(query(_="123")), EventSourceOptions())


class EventSourceStreamTests(SynchronousTestCase):
    """
    The stream writes state and ping events, throttled, until it ends.
    """

    def setUp(self):
        self.clock = Clock()
        self.bus = StateChangeBus()
        self.request = DummyRequest([b"eventsource"])

    def start(self, accounts=(1, 2), throttle_ms=1000, **options):
        stream = EventSourceStream(
            self.request,
            self.bus,
            accounts,
            EventSourceOptions(**options),
            throttle_ms,
            self.clock,
        )
        self.done = stream.start()
        return stream

    def publish(self, type_states):
        self.bus.publish(applied(type_states))

    def disconnect(self):
        self.request.processingFailed(Failure(ConnectionDone()))

    def test_start(self):
        """start sets the event-stream headers and writes an opening comment at once."""
        self.start()
        headers = self.request.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"Content-Type"), [b"text/event-stream"])
        self.assertEqual(headers.getRawHeaders(b"Cache-Control"), [b"no-cache"])
        self.assertEqual(headers.getRawHeaders(b"X-Accel-Buffering"), [b"no"])
        self.assertEqual(len(self.request.written), 1)
        self.assertTrue(self.request.written[0].startswith(b":"))
        self.assertTrue(self.request.written[0].endswith(b"\n\n"))
        self.assertEqual(self.bus.subscription_count(), 1)

    def test_state_event_text(self):
        """A state event is exactly 'event: state', one data line of JSON, a blank line."""
        self.start()
        self.publish({1: {"Email": 10}})
        self.clock.advance(0)
        self.assertEqual(
            self.request.written[1],
            b'event: state\ndata: {"@type":"StateChange","changed":{"'
            + account_id(1).encode()
            + b'":{"Email":"a"}}}\n\n',
        )

    def test_state_change_shape(self):
        """The StateChange names both changed accounts by JMAP id, with state strings."""
        self.start()
        self.publish({1: {"Email": 10, "Mailbox": 4}, 2: {"Thread": 300}})
        self.clock.advance(0)
        self.assertEqual(
            events(self.request),
            [
                (
                    "state",
                    {
                        "@type": "StateChange",
                        "changed": {
                            account_id(1): {
                                "Email": encode_state(10),
                                "Mailbox": encode_state(4),
                            },
                            account_id(2): {"Thread": encode_state(300)},
                        },
                    },
                )
            ],
        )

    def test_only_its_accounts(self):
        """A stream reports only the accounts it was opened for."""
        self.start(accounts=[1])
        self.publish({2: {"Email": 3}})
        self.clock.advance(5)
        self.assertEqual(events(self.request), [])

    def test_types_filter(self):
        """Only requested types are sent; an account left with none is dropped."""
        self.start(types=frozenset({"Email"}))
        self.publish({1: {"Email": 5, "Mailbox": 6}, 2: {"Mailbox": 7}})
        self.clock.advance(0)
        self.assertEqual(
            events(self.request),
            [("state", {"@type": "StateChange", "changed": {account_id(1): {"Email": "5"}}})],
        )

    def test_types_filter_nothing_left(self):
        """A change of only unrequested types sends no event at all."""
        self.start(types=frozenset({"Email"}))
        self.publish({1: {"Mailbox": 6}})
        self.clock.advance(5)
        self.assertEqual(events(self.request), [])

    def test_close_after_state(self):
        """With closeafter=state the response ends after the first state event."""
        self.start(close_after_state=True, ping_seconds=10)
        self.publish({1: {"Email": 5}})
        self.clock.advance(0)
        self.assertEqual(self.request.finished, 1)
        self.assertIsNone(self.successResultOf(self.done))
        self.assertEqual(self.bus.subscription_count(), 0)
        written = len(self.request.written)
        self.publish({1: {"Email": 6}})
        self.clock.advance(60)
        self.assertEqual(len(self.request.written), written)
        self.assertEqual(len(events(self.request)), 1)

    def test_pings(self):
        """Pings go out at the requested interval and report it."""
        self.start(ping_seconds=30)
        self.clock.advance(29)
        self.assertEqual(events(self.request), [])
        self.clock.advance(1)
        self.assertEqual(events(self.request), [("ping", {"interval": 30})])
        self.clock.advance(30)
        self.assertEqual(len(events(self.request)), 2)
        self.assertEqual(self.request.written[-1], b'event: ping\ndata: {"interval":30}\n\n')

    def test_no_pings(self):
        """With ping 0, no ping is ever sent."""
        self.start(ping_seconds=0)
        self.clock.advance(100000)
        self.assertEqual(events(self.request), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ping_counts_from_last_event(self):
        """A state event restarts the ping interval."""
        self.start(ping_seconds=10)
        self.clock.advance(5)
        self.publish({1: {"Email": 5}})
        self.clock.advance(0)
        self.clock.advance(9)
        self.assertEqual([name for name, _ in events(self.request)], ["state"])
        self.clock.advance(1)
        self.assertEqual([name for name, _ in events(self.request)], ["state", "ping"])

    def test_throttle_merges(self):
        """Changes within the throttle interval go out merged, once, when it has passed."""
        self.start(throttle_ms=1000)
        self.publish({1: {"Email": 5}})
        self.clock.advance(0)
        self.clock.advance(0.2)
        self.publish({1: {"Email": 6, "Mailbox": 2}})
        self.clock.advance(0.3)
        self.publish({1: {"Email": 7}, 2: {"Thread": 1}})
        self.clock.advance(0.4)
        self.assertEqual(len(events(self.request)), 1)
        self.clock.advance(0.1)
        self.assertEqual(
            events(self.request)[1:],
            [
                (
                    "state",
                    {
                        "@type": "StateChange",
                        "changed": {
                            account_id(1): {"Email": "7", "Mailbox": "2"},
                            account_id(2): {"Thread": "1"},
                        },
                    },
                )
            ],
        )
        self.clock.advance(10)
        self.assertEqual(len(events(self.request)), 2)

    def test_after_quiet_interval_sent_at_once(self):
        """A change after a quiet interval goes out on the next clock turn."""
        self.start(throttle_ms=1000)
        self.publish({1: {"Email": 5}})
        self.clock.advance(0)
        self.clock.advance(3)
        self.publish({1: {"Email": 6}})
        self.clock.advance(0)
        self.assertEqual(len(events(self.request)), 2)

    def test_publish_writes_nothing_itself(self):
        """The bus's call only schedules: nothing is written until the clock turns."""
        self.start()
        self.publish({1: {"Email": 5}})
        self.assertEqual(events(self.request), [])

    def test_disconnect(self):
        """A client that leaves is unsubscribed, its pings stop and nothing more is written."""
        self.start(ping_seconds=5)
        self.publish({1: {"Email": 5}})
        self.clock.advance(0)
        self.publish({1: {"Email": 6}})
        written = len(self.request.written)
        self.disconnect()
        self.assertIsNone(self.successResultOf(self.done))
        self.assertEqual(self.bus.subscription_count(), 0)
        self.publish({1: {"Email": 7}})
        self.clock.advance(60)
        self.assertEqual(len(self.request.written), written)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.request.finished, 0)

    def test_stop(self):
        """stop finishes the response and ends the stream."""
        stream = self.start(ping_seconds=5)
        stream.stop()
        self.assertEqual(self.request.finished, 1)
        self.assertIsNone(self.successResultOf(self.done))
        self.assertEqual(self.bus.subscription_count(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_ends_stream(self):
        """Cancelling the Deferred of start ends the stream and fires it with None."""
        self.start()
        self.done.cancel()
        self.assertIsNone(self.successResultOf(self.done))
        self.assertEqual(self.request.finished, 1)
        self.assertEqual(self.bus.subscription_count(), 0)

    def test_start_twice_refused(self):
        """A stream starts only once."""
        stream = self.start()
        self.assertRaises(RuntimeError, stream.start)


class RealRequestTests(SynchronousTestCase):
    """
    The stream on twisted.web's own Request, whose finish raises once the
    connection is lost.
    """

    def setUp(self):
        self.clock = Clock()
        self.bus = StateChangeBus()
        self.channel = DummyChannel()
        self.request = Request(self.channel)
        self.request.method = b"GET"
        self.request.clientproto = b"HTTP/1.1"
        options = EventSourceOptions(close_after_state=True, ping_seconds=1)
        self.stream = EventSourceStream(self.request, self.bus, [1], options, 1000, self.clock)
        self.done = self.stream.start()

    def test_events_reach_the_transport(self):
        """A state event is written through the channel, chunked, and the response ends."""
        self.bus.publish(applied({1: {"Email": 5}}))
        self.clock.advance(0)
        sent = self.channel.transport.written.getvalue()
        self.assertIn(b"event: state\ndata: {", sent)
        self.assertTrue(sent.endswith(b"0\r\n\r\n"))
        self.assertIsNone(self.successResultOf(self.done))

    def test_change_after_connection_lost(self):
        """After the connection is lost, changes and stop are silent no-ops."""
        self.bus.publish(applied({1: {"Email": 5}}))
        self.request.connectionLost(Failure(ConnectionDone()))
        self.clock.advance(5)
        self.stream.stop()
        self.assertIsNone(self.successResultOf(self.done))
        self.assertEqual(self.bus.subscription_count(), 0)
        self.assertNotIn(b"event: state", self.channel.transport.written.getvalue())


class ChangeCoalescerTests(SynchronousTestCase):
    """
    The coalescer sends at most once per interval, merged.
    """

    def test_close_drops_pending(self):
        """Closing drops what is pending and cancels the scheduled send."""
        clock, sent = Clock(), []
        coalescer = ChangeCoalescer(clock, 1.0, sent.append)
        coalescer.add({"a1": {"Email": "1"}})
        coalescer.close()
        coalescer.add({"a1": {"Email": "2"}})
        clock.advance(5)
        self.assertEqual(sent, [])
        self.assertEqual(clock.getDelayedCalls(), [])
