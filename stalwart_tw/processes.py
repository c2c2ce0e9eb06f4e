"""
CPU-heavy pure functions (parsing a message, detecting its language,
stemming its words) run in worker processes, so that they do not hold the
one interpreter lock the reactor, the readers and the writer share.

The workers are children spawned by the reactor (L{process_worker}),
speaking length-prefixed pickles over their stdin and stdout: results are
read by the reactor itself, with no helper thread in this process to
contend for the lock (a C{concurrent.futures} pool adds two).

A function sent here takes and returns picklable values and touches no
state of the node: it may run in any worker, and again after one dies.
With no processes configured, the same calls run on worker threads.
"""

import os
import pickle
import sys
from collections import deque

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from stalwart_tw.process_worker import HEADER


class WorkerDied(Exception):
    """
    The worker process running a call died, twice: the call is given up.
    """


class _Call:
    def __init__(self, frame, retries):
        self.frame = frame
        self.retries = retries
        self.result = Deferred()


class _Worker(ProcessProtocol):
    """
    One child: a call at a time, its answer read as it comes.
    """

    log = Logger()

    def __init__(self, pool):
        self._pool = pool
        self._buffer = bytearray()
        self.call = None
        self.ended = Deferred()
        self.pid = None

    def connectionMade(self):
        self.pid = self.transport.pid

    def send(self, call):
        self.call = call
        self.transport.write(HEADER.pack(len(call.frame)) + call.frame)

    def childDataReceived(self, fd, data):
        if fd == 2:
            for line in data.decode("utf-8", "replace").splitlines():
                self.log.warn("parsing worker {pid}: {line}", pid=self.pid, line=line)
            return
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if len(self._buffer) < HEADER.size + length:
                return
            frame = bytes(self._buffer[HEADER.size:HEADER.size + length])
            del self._buffer[:HEADER.size + length]
            call, self.call = self.call, None
            succeeded, value = pickle.loads(frame)
            if succeeded:
                call.result.callback(value)
            else:
                call.result.errback(value)
            self._pool._idle(self)

    def processEnded(self, reason):
        call, self.call = self.call, None
        self._pool._ended(self, call, reason)
        self.ended.callback(None)


class ProcessPool:
    """
    @param size: worker processes; 0 runs every call with C{in_thread}.
    @param in_thread: C{in_thread(function, *args)} returns a Deferred of
        the call made on a worker thread.
    """

    log = Logger()

    def __init__(self, size, in_thread, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.size = size
        self._in_thread = in_thread
        self._reactor = reactor
        self._initializers = []
        self._workers = []
        self._free = []
        self._queue = deque()
        self._stopped = True

    def start(self):
        """
        Start every worker and accept calls.

        @return: a Deferred that fires once each worker has run its
            initializers (the first message parsed then waits for no
            model to load), or fails with L{WorkerDied} when they kill it.
        """
        self._stopped = False
        warming = [self.run(os.getpid) for _ in range(self.size)]
        return DeferredList(warming, fireOnOneErrback=True, consumeErrors=True).addCallbacks(
            lambda _: None, lambda failure: failure.value.subFailure)

    def add_initializer(self, function):
        """
        Have every worker process call C{function()} once as it starts
        (import a parser, load a model), before its first call.
        """
        self._initializers.append(function)

    def run(self, function, *args):
        """
        @return: a Deferred of C{function(*args)}, run in a worker process.
            A worker that dies mid-call (killed, out of memory) is replaced
            and the call is made once more; a second death fails it with
            L{WorkerDied}.
        """
        if not self.size:
            return self._in_thread(function, *args)
        if self._stopped:
            raise RuntimeError("the process pool is stopped")
        call = _Call(pickle.dumps((function, args), pickle.HIGHEST_PROTOCOL), retries=1)
        self._queue.append(call)
        self._dispatch()
        return call.result

    def _dispatch(self):
        while self._queue and len(self._workers) < self.size and not self._free:
            self._spawn()
        while self._queue and self._free:
            self._free.pop().send(self._queue.popleft())

    def _spawn(self):
        worker = _Worker(self)
        self._reactor.spawnProcess(
            worker, sys.executable,
            [sys.executable, "-m", "stalwart_tw.process_worker"],
            env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"},
        )
        hello = pickle.dumps((list(sys.path), pickle.dumps(tuple(self._initializers))))
        worker.transport.write(HEADER.pack(len(hello)) + hello)
        self._workers.append(worker)
        self._free.append(worker)

    def _idle(self, worker):
        self._free.append(worker)
        self._dispatch()

    def _ended(self, worker, call, reason):
        self._workers.remove(worker)
        if worker in self._free:
            self._free.remove(worker)
        if self._stopped:
            if call is not None:
                call.result.errback(RuntimeError("the process pool stopped"))
            return
        self.log.error("parsing worker process {pid} died ({reason}); starting another",
                       pid=worker.pid, reason=reason.getErrorMessage())
        if call is not None:
            if call.retries:
                call.retries -= 1
                self._queue.appendleft(call)
            else:
                call.result.errback(WorkerDied(f"the worker running it died: "
                                               f"{reason.getErrorMessage()}"))
        self._dispatch()

    def stop(self):
        """
        Stop the workers: each ends once its input closes.

        @return: a Deferred that fires once they all have.
        """
        self._stopped = True
        queued, self._queue = self._queue, deque()
        for call in queued:
            call.result.errback(RuntimeError("the process pool stopped"))
        workers = list(self._workers)
        if not workers:
            return succeed(None)
        for worker in workers:
            worker.transport.closeStdin()
        done = Deferred()
        remaining = [len(workers)]

        def one_ended(_):
            remaining[0] -= 1
            if not remaining[0]:
                done.callback(None)

        for worker in workers:
            worker.ended.addCallback(one_ended)
        return done
