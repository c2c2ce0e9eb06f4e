"""
Counting work under way, so that a shutdown can wait for it to finish.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from stalwart_tw.logs import Logger

log = Logger()


class InFlight:
    """
    A count of operations started and not yet finished, with Deferreds that
    fire when it drops to zero. Used on the reactor thread only.
    """

    def __init__(self):
        self.count = 0
        self._waiters = []

    def track(self, operation):
        """
        Count C{operation} (a Deferred) until it fires.

        @return: C{operation}, whose result passes through unchanged.
        """
        self.count += 1
        return operation.addBoth(self._finished)

    def _finished(self, passthrough):
        self.count -= 1
        if self.count == 0:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)
        return passthrough

    def idle(self):
        """
        @return: a Deferred that fires once nothing counted is under way.
        """
        if self.count == 0:
            return succeed(None)
        waiter = Deferred()
        self._waiters.append(waiter)
        return waiter


def uncancellable(deferred):
    """
    Detach work from whoever waits for it. Klein cancels a handler when
    its client goes away; a commit, or work that holds blobs in flight,
    must still run to its end (and its listeners hear of it).

    @return: a Deferred with the result of C{deferred}, which the caller
        may cancel without cancelling C{deferred}.
    """
    view = Deferred()

    def forward(result):
        if not view.called:
            view.callback(result)
        elif isinstance(result, Failure):
            log.failure("work finished after its caller left, and failed", result)
        return None

    deferred.addBoth(forward)
    return view
