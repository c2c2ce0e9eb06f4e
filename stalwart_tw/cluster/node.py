"""
The node: the one door through which the rest of the server writes.

Everything outside cluster/ calls C{node.commit(batch)} and
C{node.read_barrier()} and gets Deferreds back, without knowing whether this
node runs alone or in a cluster. L{LocalNode} is the node of a server that
runs alone: its log is the order in which batches reach the writer thread,
and its applied index counts them. The clustered node will replace it with
one that commits through Raft before applying.
"""

from twisted.application.service import Service
from twisted.internet.defer import DeferredLock, fail, succeed

from stalwart_tw.inflight import InFlight, uncancellable
from stalwart_tw.logs import Logger
from stalwart_tw.store.batch import apply_batch
from stalwart_tw.store.errors import BatchConflict, InvalidBatch, NodeStopping


class LocalNode(Service):
    """
    A node that runs alone: commit applies a batch on the store's writer
    thread, with the next applied index.
    """

    log = Logger()
    name = "node"

    def __init__(self, store):
        self._store = store
        self._last_index = None
        self._locks = {}
        self._listeners = []
        # Serialised operations and commits accepted and not finished; stop
        # waits for them.
        self._operations = InFlight()
        self._stopping = False

    def startService(self):
        super().startService()
        return self._store.applied_index().addCallback(self._set_index)

    def _set_index(self, index):
        self._last_index = index

    def stopService(self):
        super().stopService()
        self._stopping = True
        # Operations already accepted (some still waiting for their lock)
        # and the batches they hand to the writer finish before the store
        # closes.
        return self._operations.idle().addCallback(lambda _: self._store.drained())

    @property
    def applied_index(self):
        """
        The index of the last batch this node handed to the store.
        """
        return self._last_index

    def commit(self, batch):
        """
        Make C{batch} durable and applied.

        @return: a Deferred firing with the L{ApplyResult} once the batch is
            on disk, or failing with L{BatchConflict} when the batch was
            built on stale state (nothing of it was applied).
        """
        if self._last_index is None:
            raise RuntimeError("the node has not started")
        self._last_index += 1
        result = self._store.write(apply_batch, batch, self._last_index)
        # Counted until the listeners have heard, so a stop waits for them;
        # and a caller that stops waiting (a client that left) must not
        # stop the news of an applied batch from reaching the listeners.
        applied = result.addCallback(self._applied)
        waiting = uncancellable(applied)
        # Tracked after the caller's Deferred is fed, so a stop that waits
        # for idle resumes only once every caller has its answer.
        self._operations.track(applied)
        return waiting

    def _applied(self, result):
        if result.conflicts:
            raise BatchConflict(result.conflicts)
        if result.rejected is not None:
            raise InvalidBatch(result.rejected)
        for listener in list(self._listeners):
            try:
                listener(result)
            except Exception:
                # The batch is durable whatever a listener does with the news.
                self.log.failure("a listener failed on batch {index}", index=result.index)
        return result

    def read_barrier(self):
        """
        @return: a Deferred that fires when reads on this node see every
            write committed before the call; alone, that is at once.
        """
        return succeed(None)

    def add_listener(self, listener):
        """
        Call C{listener(apply_result)} after every applied batch: the hook of
        the state-change bus.
        """
        self._listeners.append(listener)

    def serialised(self, key, function, *args, **kwargs):
        """
        Run C{function} (which may return a Deferred) while holding the lock
        of C{key}, usually an account id: a write reads, builds its batch and
        commits with no other write to the same account in between.

        Once the node is stopping, new operations fail with L{NodeStopping};
        those accepted before run to the end.
        """
        if self._stopping:
            return fail(NodeStopping("the node is shutting down"))
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = DeferredLock()
        result = lock.run(function, *args, **kwargs)

        def forget(passthrough):
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)
            return passthrough

        return self._operations.track(result.addBoth(forget))


# NodeStopping is defined with the other write errors and stays importable
# from here.
__all__ = ["LocalNode"]
