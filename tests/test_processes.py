"""
The parsing processes: calls run in other interpreters, errors come back
as they were raised, a dead worker is replaced.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from stalwart_tw.processes import ProcessPool, WorkerDied

# Set by the initializer in each worker process.
_warmed = None


def _warm():
    global _warmed
    _warmed = os.getpid()


def _report(value):
    return value, os.getpid(), _warmed


def _refuse(text):
    raise ValueError(f"refused {text}")


def _die_once(marker):
    # The first call kills its worker; the retry finds the marker.
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return os.getpid()


def _die():
    os._exit(3)


class ProcessPoolTests(TestCase):

    def pool(self, size=1):
        threads = []

        def in_thread(function, *args):
            threads.append(function)
            return deferToThread(function, *args)

        pool = ProcessPool(size, in_thread, reactor=reactor)
        pool.add_initializer(_warm)
        pool.start()
        self.addCleanup(pool.stop)
        return pool, threads

    @inlineCallbacks
    def test_runs_in_another_process_after_its_initializer(self):
        """A call runs in a worker process that ran the initializers first."""
        pool, _ = self.pool()
        value, pid, warmed = yield pool.run(_report, {"subject": "hello"})
        self.assertEqual(value, {"subject": "hello"})
        self.assertNotEqual(pid, os.getpid())
        self.assertEqual(warmed, pid)

    @inlineCallbacks
    def test_error_comes_back(self):
        """An exception raised in the worker fails the call with that exception."""
        pool, _ = self.pool()
        with self.assertRaises(ValueError) as raised:
            yield pool.run(_refuse, "this")
        self.assertEqual(str(raised.exception), "refused this")
        # The worker lives on.
        value, _, _ = yield pool.run(_report, 2)
        self.assertEqual(value, 2)

    @inlineCallbacks
    def test_dead_worker_replaced_and_call_retried(self):
        """A worker that dies mid-call is replaced, the call made again, one line logged."""
        pool, _ = self.pool()
        _, first, _ = yield pool.run(_report, 1)
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        marker = os.path.abspath(self.mktemp())
        pid = yield pool.run(_die_once, marker)
        self.assertNotEqual(pid, first)
        died = [e for e in logged if "parsing worker process" in e.get("log_format", "")]
        self.assertEqual(len(died), 1)

    @inlineCallbacks
    def test_worker_that_always_dies_fails_the_call(self):
        """A call that kills its worker twice fails with WorkerDied; later calls work."""
        pool, _ = self.pool()
        with self.assertRaises(WorkerDied):
            yield pool.run(_die)
        value, _, _ = yield pool.run(_report, 3)
        self.assertEqual(value, 3)

    @inlineCallbacks
    def test_no_processes_runs_on_threads(self):
        """With a size of 0 a call goes to the worker threads, in this process."""
        pool, threads = self.pool(size=0)
        value, pid, _ = yield pool.run(_report, 4)
        self.assertEqual((value, pid), (4, os.getpid()))
        self.assertEqual(threads, [_report])

    @inlineCallbacks
    def test_stopped_pool_refuses_calls(self):
        """After stop, the workers are gone and a call is refused at once."""
        pool, _ = self.pool()
        yield pool.run(_report, 5)
        yield pool.stop()
        self.assertRaises(RuntimeError, pool.run, _report, 6)


class ParsingProcessFootprintTests(TestCase):
    """
    A parsing process holds the parser and the language model, not the
    server: no database or network code is imported into it.
    """

    @inlineCallbacks
    def test_parsing_imports_no_server_code(self):
        from stalwart_tw.mail import parsing

        pool = ProcessPool(1, deferToThread, reactor=reactor)
        pool.add_initializer(parsing.warm_up)
        pool.start()
        self.addCleanup(pool.stop)
        message = self.mktemp()
        with open(message, "wb") as output:
            output.write(b"Subject: Hello\r\nFrom: a@example.com\r\n\r\nA short note about lunch.\r\n")
        ingested = yield pool.run(parsing.ingest_file, message, "h", "en")
        self.assertEqual(ingested.size, os.path.getsize(message))
        # eval is pickled by name, so asking costs the worker no import.
        loaded = yield pool.run(eval, "sorted({name.split('.')[0] for name in __import__('sys').modules})")
        self.assertIn("Stemmer", loaded)
        self.assertIn("py3langid", loaded)
        self.assertEqual([name for name in ("sqlalchemy", "twisted", "klein") if name in loaded], [])


def _broken_initializer():
    raise ImportError("no parser here")


class ProcessPoolStartTests(TestCase):
    """
    Starting a pool starts its workers, so the first call waits for no
    model to load, and a worker that cannot initialise stops the start.
    """

    @inlineCallbacks
    def test_start_warms_every_worker(self):
        pool = ProcessPool(2, deferToThread, reactor=reactor)
        pool.add_initializer(_warm)
        yield pool.start()
        self.addCleanup(pool.stop)
        answers = yield gatherResults([pool.run(_report, n) for n in range(2)])
        self.assertEqual(len({pid for _, pid, _ in answers}), 2)
        self.assertEqual([warmed for _, _, warmed in answers], [pid for _, pid, _ in answers])

    @inlineCallbacks
    def test_broken_initializer_fails_the_start(self):
        pool = ProcessPool(1, deferToThread, reactor=reactor)
        pool.add_initializer(_broken_initializer)
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        with self.assertRaises(WorkerDied):
            yield pool.start()
        yield pool.stop()
        self.assertTrue(any("no parser here" in str(event.get("line", "")) for event in logged))
