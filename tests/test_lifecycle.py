"""
Tests for L{stalwart_tw.lifecycle.SequentialService}.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from stalwart_tw.lifecycle import SequentialService


class StartFailed(Exception):
    """A fake child's start failed."""


class StopFailed(Exception):
    """A fake child's stop failed."""


class FakeChild(Service):
    """
    A child service that records its calls in a journal shared by its
    siblings and, when made slow, returns a Deferred the test fires by hand.
    """

    def __init__(self, name, journal, slow_start=False, slow_stop=False):
        self.name = name
        self._journal = journal
        self._slow_start = slow_start
        self._slow_stop = slow_stop
        # The Deferreds of the calls made so far, for the test to fire.
        self.starting = None
        self.stopping = None

    def privilegedStartService(self):
        self._journal.append(("privileged", self.name))
        Service.privilegedStartService(self)

    def startService(self):
        self._journal.append(("start", self.name))
        Service.startService(self)
        if self._slow_start:
            self.starting = Deferred()
            return self.starting
        return None

    def stopService(self):
        self._journal.append(("stop", self.name))
        Service.stopService(self)
        if self._slow_stop:
            self.stopping = Deferred()
            return self.stopping
        return None


class FailingStartChild(FakeChild):
    """A child whose start raises at once."""

    def startService(self):
        FakeChild.startService(self)
        raise StartFailed(self.name)


class FailingStopChild(FakeChild):
    """A child whose stop raises at once."""

    def stopService(self):
        FakeChild.stopService(self)
        raise StopFailed(self.name)


class SequentialServiceTests(TestCase):
    """
    Tests for L{SequentialService}.
    """

    def setUp(self):
        self.journal = []
        self.parent = SequentialService()

    def add(self, name, kind=FakeChild, **slowness):
        child = kind(name, self.journal, **slowness)
        child.setServiceParent(self.parent)
        return child

    def test_synchronous_children_start_in_order(self):
        """Children that start synchronously all start, in order, within startService."""
        for name in "abc":
            self.add(name)
        self.parent.startService()
        self.assertTrue(self.parent.running)
        self.assertEqual(self.journal, [("start", "a"), ("start", "b"), ("start", "c")])
        self.assertIsNone(self.successResultOf(self.parent.started))

    def test_privileged_start_in_order(self):
        """privilegedStartService reaches every child, in order."""
        for name in "abc":
            self.add(name)
        self.parent.privilegedStartService()
        self.assertEqual(
            self.journal, [("privileged", "a"), ("privileged", "b"), ("privileged", "c")]
        )

    def test_next_start_waits_for_previous(self):
        """A child starts only once the start Deferred of the one before it has fired."""
        first = self.add("a", slow_start=True)
        second = self.add("b", slow_start=True)
        self.add("c")
        self.parent.startService()
        self.assertEqual(self.journal, [("start", "a")])
        self.assertNoResult(self.parent.started)

        first.starting.callback(None)
        self.assertEqual(self.journal, [("start", "a"), ("start", "b")])
        self.assertNoResult(self.parent.started)

        second.starting.callback(None)
        self.assertEqual(self.journal, [("start", "a"), ("start", "b"), ("start", "c")])
        self.assertIsNone(self.successResultOf(self.parent.started))

    def test_failing_start_stops_the_chain(self):
        """A child whose start Deferred fails: the ones after it are not started and started fails."""
        first = self.add("a", slow_start=True)
        self.add("b")
        self.parent.startService()
        first.starting.errback(StartFailed("a"))
        self.assertEqual(self.journal, [("start", "a")])
        self.failureResultOf(self.parent.started, StartFailed)

    def test_raising_start_stops_the_chain(self):
        """A child whose startService raises: the ones after it are not started and started fails."""
        self.add("a")
        self.add("b", kind=FailingStartChild)
        self.add("c")
        self.parent.startService()
        self.assertEqual(self.journal, [("start", "a"), ("start", "b")])
        self.failureResultOf(self.parent.started, StartFailed)

    def test_stop_after_failed_start(self):
        """After a failed start, stop stops the children started, the failed one included, in reverse."""
        self.add("a")
        self.add("b", kind=FailingStartChild)
        self.add("c")
        self.parent.startService()
        self.failureResultOf(self.parent.started, StartFailed)
        del self.journal[:]
        self.assertIsNone(self.successResultOf(self.parent.stopService()))
        self.assertEqual(self.journal, [("stop", "b"), ("stop", "a")])
        self.assertFalse(self.parent.running)

    def test_stop_in_reverse_order(self):
        """Children stop last first, within stopService when their stops are synchronous."""
        for name in "abc":
            self.add(name)
        self.parent.startService()
        del self.journal[:]
        self.assertIsNone(self.successResultOf(self.parent.stopService()))
        self.assertEqual(self.journal, [("stop", "c"), ("stop", "b"), ("stop", "a")])
        self.assertFalse(self.parent.running)

    def test_next_stop_waits_for_previous(self):
        """A child stops only once the stop Deferred of the one after it has fired."""
        self.add("a")
        middle = self.add("b", slow_stop=True)
        last = self.add("c", slow_stop=True)
        self.parent.startService()
        del self.journal[:]
        stopped = self.parent.stopService()
        self.assertFalse(self.parent.running)
        self.assertEqual(self.journal, [("stop", "c")])

        last.stopping.callback(None)
        self.assertEqual(self.journal, [("stop", "c"), ("stop", "b")])
        self.assertNoResult(stopped)

        middle.stopping.callback(None)
        self.assertEqual(self.journal, [("stop", "c"), ("stop", "b"), ("stop", "a")])
        self.assertIsNone(self.successResultOf(stopped))

    def test_stop_waits_for_start_in_progress(self):
        """A stop asked for during a start stops nothing until that start has ended, then stops all."""
        first = self.add("a", slow_start=True)
        self.add("b")
        self.parent.startService()
        stopped = self.parent.stopService()
        self.assertEqual(self.journal, [("start", "a")])
        self.assertNoResult(stopped)

        first.starting.callback(None)
        self.assertEqual(
            self.journal, [("start", "a"), ("start", "b"), ("stop", "b"), ("stop", "a")]
        )
        self.assertIsNone(self.successResultOf(self.parent.started))
        self.assertIsNone(self.successResultOf(stopped))

    def test_stop_waits_for_failing_start(self):
        """A stop waiting for a start that then fails stops the children that were started."""
        self.add("a")
        second = self.add("b", slow_start=True)
        self.add("c")
        self.parent.startService()
        stopped = self.parent.stopService()
        self.assertNoResult(stopped)

        second.starting.errback(StartFailed("b"))
        self.assertEqual(
            self.journal, [("start", "a"), ("start", "b"), ("stop", "b"), ("stop", "a")]
        )
        self.failureResultOf(self.parent.started, StartFailed)
        self.assertIsNone(self.successResultOf(stopped))

    def test_failing_stop_does_not_prevent_the_rest(self):
        """A child whose stop fails or raises is logged, and the ones before it still stop."""
        self.add("a")
        self.add("b", kind=FailingStopChild)
        slow = self.add("c", slow_stop=True)
        self.parent.startService()
        del self.journal[:]
        stopped = self.parent.stopService()
        slow.stopping.errback(StopFailed("c"))
        self.assertEqual(self.journal, [("stop", "c"), ("stop", "b"), ("stop", "a")])
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual(len(self.flushLoggedErrors(StopFailed)), 2)

    def test_second_stop_waits_for_the_first(self):
        """stopService asked again during a stop stops nothing twice and fires when the first stop ends."""
        self.add("a")
        last = self.add("b", slow_stop=True)
        self.parent.startService()
        del self.journal[:]
        first_stop = self.parent.stopService()
        second_stop = self.parent.stopService()
        self.assertEqual(self.journal, [("stop", "b")])
        self.assertNoResult(second_stop)

        last.stopping.callback(None)
        self.assertEqual(self.journal, [("stop", "b"), ("stop", "a")])
        self.assertIsNone(self.successResultOf(first_stop))
        self.assertIsNone(self.successResultOf(second_stop))

    def test_stop_when_never_started(self):
        """Stopping a service that never started stops no child."""
        self.add("a")
        self.assertIsNone(self.successResultOf(self.parent.stopService()))
        self.assertEqual(self.journal, [])

    def test_restart(self):
        """A stopped service starts and stops its children again, in order."""
        for name in "ab":
            self.add(name)
        self.parent.startService()
        self.successResultOf(self.parent.stopService())
        del self.journal[:]
        self.parent.startService()
        self.successResultOf(self.parent.stopService())
        self.assertEqual(
            self.journal, [("start", "a"), ("start", "b"), ("stop", "b"), ("stop", "a")]
        )

    def test_child_added_during_start_waits_its_turn(self):
        """A child added while a start is in progress starts after the others and counts in started."""
        first = self.add("a", slow_start=True)
        self.parent.startService()
        late = self.add("b", slow_start=True)
        self.assertEqual(self.journal, [("start", "a"), ("privileged", "b")])

        first.starting.callback(None)
        self.assertEqual(self.journal, [("start", "a"), ("privileged", "b"), ("start", "b")])
        self.assertNoResult(self.parent.started)
        late.starting.callback(None)
        self.assertIsNone(self.successResultOf(self.parent.started))

    def test_child_added_while_running_is_stopped_first(self):
        """A child added once the start has ended starts at once and, being last, stops first."""
        self.add("a")
        self.parent.startService()
        self.add("b")
        self.assertEqual(self.journal, [("start", "a"), ("privileged", "b"), ("start", "b")])
        del self.journal[:]
        self.successResultOf(self.parent.stopService())
        self.assertEqual(self.journal, [("stop", "b"), ("stop", "a")])

    def test_late_child_start_failure_is_logged(self):
        """A child added once the start has ended and failing to start is logged."""
        self.add("a")
        self.parent.startService()
        self.add("b", kind=FailingStartChild)
        self.assertEqual(len(self.flushLoggedErrors(StartFailed)), 1)
        self.assertIsNone(self.successResultOf(self.parent.started))

    def test_removed_child_is_stopped_once(self):
        """Removing a started child stops it, and the later stop of the parent does not stop it again."""
        self.add("a")
        second = self.add("b")
        self.parent.startService()
        del self.journal[:]
        second.disownServiceParent()
        self.assertEqual(self.journal, [("stop", "b")])
        self.successResultOf(self.parent.stopService())
        self.assertEqual(self.journal, [("stop", "b"), ("stop", "a")])
