"""
Services that start one after another and stop in reverse.

Twisted's MultiService starts its children all at once and stops them all at
once: a child whose start returns a Deferred is not waited for, so the one
after it may run before what it depends on is ready (the JMAP port opening
before the store is), and at shutdown the store may close under a request
still being answered. L{SequentialService} keeps the order in both
directions: each child starts once the one before it has started, and stops
once the one after it has stopped.

Choices where a careful user could expect either:
 - a stop asked for while a start is in progress waits for that start to end
   (the remaining children are still started), then stops everything that
   was started: a child is never stopped while its own start is running;
 - the child whose start failed is stopped with the others, since it may
   hold part of what it was acquiring; the children after it, never
   started, are not stopped;
 - a child that fails to stop is logged, and the ones before it are still
   stopped: a shutdown goes to the end.
"""

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.python.failure import Failure

from stalwart_tw.logs import Logger


class _Waiters:
    """
    Deferreds handed to whoever waits for something in progress, all fired
    with None when it ends. (Each waiter gets its own Deferred, so no one's
    callbacks see another's results.)
    """

    def __init__(self):
        # The Deferreds not yet fired, in the order they were handed out.
        self._waiting = []

    def wait(self):
        """
        @return: a Deferred that fires with None at the next L{fire}.
        """
        waiter = Deferred()
        self._waiting.append(waiter)
        return waiter

    def fire(self):
        """
        Fire every Deferred handed out so far.
        """
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)


class SequentialService(MultiService):
    """
    A MultiService whose children start in order, each once the start of the
    one before it has finished, and stop in reverse order, each once the
    stop of the one after it has finished.

    A child's C{startService} and C{stopService} may return a Deferred (or
    raise); one that returns anything else is done when it returns, so
    children that start synchronously all start within L{startService}.

    @ivar started: a Deferred firing with None once every child has started,
        or failing with the failure of the first child whose start failed
        (the children after it are not started). None until L{startService}.
        It is the caller's: this service adds no callback to it.
    """

    log = Logger()

    def __init__(self):
        super().__init__()
        self.started = None
        # The children whose start was called, in that order: the ones a
        # stop stops, last first.
        self._begun = []
        # The children still to start in the start in progress, first first.
        self._to_start = []
        # Whether a start is in progress.
        self._starting = False
        # Woken when the start in progress ends, whatever its outcome.
        self._start_ended = _Waiters()
        # Whether a stop is in progress.
        self._stopping = False
        # Woken when the stop in progress ends.
        self._stop_ended = _Waiters()

    # privilegedStartService is MultiService's: every child, in order.

    def startService(self):
        """
        Mark this service running and start the children in order; the
        outcome is L{started}.
        """
        Service.startService(self)
        self._to_start = list(self)
        self.started = Deferred()
        self._start_queued(self.started)

    def _start_queued(self, outcome):
        """
        Start the children of C{self._to_start} in order, then fire
        C{outcome} with the result and wake whoever waits for the start.
        """
        self._starting = True
        starting = ensureDeferred(self._start_in_order())
        starting.addBoth(self._start_finished, outcome)

    async def _start_in_order(self):
        while self._to_start:
            child = self._to_start.pop(0)
            self._begun.append(child)
            await maybeDeferred(child.startService)

    def _start_finished(self, result, outcome):
        # After a failure, the children left are not started.
        self._to_start = []
        self._starting = False
        # The outcome first, so that its callbacks see it before a stop
        # waiting for this start goes on.
        if isinstance(result, Failure):
            outcome.errback(result)
        else:
            outcome.callback(None)
        self._start_ended.fire()

    def stopService(self):
        """
        Mark this service stopped; once a start in progress has ended, stop
        the started children in reverse order.

        @return: a Deferred firing with None once every child has stopped
            (a child whose stop failed is logged, not reported here). Asked
            again while a stop is in progress, it fires when that one ends.
        """
        if self._stopping:
            return self._stop_ended.wait()
        Service.stopService(self)
        self._stopping = True
        stopping = ensureDeferred(self._stop_in_reverse())
        stopping.addBoth(self._stop_finished)
        return stopping

    async def _stop_in_reverse(self):
        if self._starting:
            await self._start_ended.wait()
        while self._begun:
            child = self._begun.pop()
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("stopping the service {name} failed", name=_name_of(child))

    def _stop_finished(self, result):
        self._stopping = False
        self._stop_ended.fire()
        return result

    def addService(self, service):
        """
        Add a child. Added while running, it is started after the children
        of a start in progress (and counts in L{started}), or at once if
        none is; a late start that fails is logged.
        """
        if service.name is not None:
            if service.name in self.namedServices:
                raise RuntimeError(f"cannot have two services with same name {service.name!r}")
            self.namedServices[service.name] = service
        self.services.append(service)
        if self.running:
            # It may be too late for privileges, as in MultiService.
            service.privilegedStartService()
            self._to_start.append(service)
            if not self._starting:
                late = Deferred()
                late.addErrback(self._late_start_failed, service)
                self._start_queued(late)

    def _late_start_failed(self, failure, service):
        self.log.failure("starting the service {name} failed", failure, name=_name_of(service))

    def removeService(self, service):
        """
        Remove a child, stopping it if it was started.

        @return: the Deferred of its stop if it was started, else None.
        """
        begun = service in self._begun
        if begun:
            self._begun.remove(service)
        if service in self._to_start:
            self._to_start.remove(service)
        if service.name:
            del self.namedServices[service.name]
        self.services.remove(service)
        if begun:
            return service.stopService()
        return None


def _name_of(service):
    """
    @return: how the log names C{service}: its name, else its repr.
    """
    return service.name or repr(service)
