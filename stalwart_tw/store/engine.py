"""
The node's SQLite database: one writer thread, a pool of reader threads.

Every database call runs off the reactor thread and answers with a Deferred.
Writes go through a single thread holding a single connection, so they are
applied one at a time in the order they were submitted; reads run
concurrently on other connections, each inside one transaction, which in WAL
mode is a consistent snapshot that a concurrent write never tears.

SQLite-only SQL (pragmas, BEGIN IMMEDIATE) is confined to this module so the
rest of store/ stays portable to a PostgreSQL-speaking database.
"""

import os
import threading
from collections import deque
from contextlib import contextmanager

from sqlalchemy import create_engine, event, select
from sqlalchemy.exc import SQLAlchemyError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from stalwart_tw.inflight import InFlight
from stalwart_tw.logs import Logger
from stalwart_tw.store import fts, schema
from stalwart_tw.store.collation import register as register_collations
from stalwart_tw.store.errors import StoreError

# The full-text index is created with the tables (idempotent).
fts.install(schema.metadata)

DATABASE_FILE = "stalwart.sqlite3"
APPLIED_INDEX = "applied_index"
# Writes committed together at most: bounds the latency one group adds.
MAX_GROUP = 256


def _configure_connection(dbapi_connection, connection_record):
    # Let SQLAlchemy's "begin" event open transactions explicitly instead of
    # the sqlite3 module's implicit ones, which do not cover SELECTs.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives power loss, not only a crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
    register_collations(dbapi_connection)


def _begin(connection):
    if connection.info.get("writer"):
        # Take the write lock up front so the transaction cannot fail midway
        # on a lock upgrade.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


@contextmanager
def savepoint(connection, name):
    """
    Run a block inside a savepoint: undone alone if it raises, kept
    otherwise. Plain SQL (standard, PostgreSQL speaks it too) because
    SQLAlchemy compiles its savepoint statements anew on every use, which
    costs more than applying a small batch.
    """
    connection.exec_driver_sql(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
        connection.exec_driver_sql(f"RELEASE SAVEPOINT {name}")
        raise
    connection.exec_driver_sql(f"RELEASE SAVEPOINT {name}")


def make_engine(database_path, reader_threads=4):
    """
    Create the SQLAlchemy engine for the SQLite file at C{database_path},
    with a connection for each reader thread and one for the writer.
    """
    engine = create_engine(
        f"sqlite:///{database_path}",
        connect_args={"check_same_thread": False},
        pool_size=reader_threads + 1,
        max_overflow=0,
    )
    event.listen(engine, "connect", _configure_connection)
    event.listen(engine, "begin", _begin)
    return engine


class Store:
    """
    The database of one node: a folder holding the SQLite file, the writer
    thread and the reader pool.

    @ivar path: the folder holding the database file.
    """

    log = Logger()

    def __init__(self, path, reader_threads=4, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.path = path
        self.database_path = os.path.join(path, DATABASE_FILE)
        self._reader_threads = max(1, reader_threads)
        self._engine = None
        self._writer_pool = None
        self._reader_pool = None
        self._writer_connection = None
        self._pending_writes = InFlight()
        # Writes waiting for the writer thread; the lock also guards
        # _draining, true while the writer thread is emptying the queue.
        self._write_queue = deque()
        self._queue_lock = threading.Lock()
        self._draining = False

    def open(self):
        """
        Create the folder and the tables if needed and start the threads.

        @return: a Deferred that fires when the database is ready.
        """
        os.makedirs(self.path, exist_ok=True)
        self._engine = make_engine(self.database_path, self._reader_threads)
        self._writer_pool = ThreadPool(1, 1, name="store-writer")
        self._reader_pool = ThreadPool(1, self._reader_threads, name="store-reader")
        self._writer_pool.start()
        self._reader_pool.start()
        return self.write(lambda connection: schema.metadata.create_all(connection))

    def _discard_writer(self):
        connection, self._writer_connection = self._writer_connection, None
        if connection is not None:
            try:
                connection.invalidate()
            except Exception:
                pass

    def _writer(self):
        # Only ever called on the writer thread.
        if self._writer_connection is None:
            self._writer_connection = self._engine.connect()
            self._writer_connection.info["writer"] = True
        return self._writer_connection

    def _drain_writes(self):
        # Runs on the writer thread until the queue is empty. Every write
        # taken from the queue gets an outcome, whatever goes wrong.
        while True:
            with self._queue_lock:
                group = []
                while self._write_queue and len(group) < MAX_GROUP:
                    group.append(self._write_queue.popleft())
                if not group:
                    self._draining = False
                    return
            try:
                outcomes = self._run_group(group)
            except BaseException:
                outcomes = [(False, Failure())] * len(group)
            self._reactor.callFromThread(_deliver, group, outcomes)

    def _run_group(self, group):
        """
        Apply queued writes in one transaction, each in its own savepoint:
        one that raises is rolled back alone, and one commit (one fsync)
        makes all the others durable together.
        """
        outcomes = []
        try:
            connection = self._writer()
            with connection.begin():
                for function, args, kwargs, _ in group:
                    try:
                        with savepoint(connection, "queued_write"):
                            outcomes.append((True, function(connection, *args, **kwargs)))
                    except Exception:
                        outcomes.append((False, Failure()))
        except Exception:
            # The connection or the commit failed: nothing of the group is
            # durable. Reconnect for the next group.
            failure = Failure()
            self._discard_writer()
            self.log.failure("a group of {count} writes failed to commit", failure,
                             count=len(group))
            outcomes = [(False, failure)] * len(group)
        return outcomes

    def _run_read(self, function, args, kwargs):
        with self._engine.connect() as connection:
            with connection.begin():
                return function(connection, *args, **kwargs)

    def write(self, function, *args, **kwargs):
        """
        Run C{function(connection, *args, **kwargs)} on the writer thread,
        all or nothing: rolled back if it raises. Writes queued together are
        committed together (group commit); each one's Deferred fires only
        once its commit is durable.

        @return: a Deferred firing with what C{function} returned.
        """
        if self._writer_pool is None:
            raise RuntimeError("the store is not open")
        result = Deferred()
        with self._queue_lock:
            self._write_queue.append((function, args, kwargs, result))
            start, self._draining = not self._draining, True
        if start:
            self._writer_pool.callInThread(self._drain_writes)
        return self._pending_writes.track(result)

    def read(self, function, *args, **kwargs):
        """
        Run C{function(connection, *args, **kwargs)} on a reader thread
        inside one read transaction.

        @return: a Deferred firing with what C{function} returned.
        """
        if self._reader_pool is None:
            raise RuntimeError("the store is not open")
        return deferToThreadPool(
            self._reactor, self._reader_pool, self._run_read, function, args, kwargs
        )

    def applied_index(self):
        """
        @return: a Deferred firing with the index of the last applied batch.
        """
        return self.read(read_applied_index)

    def drained(self):
        """
        @return: a Deferred that fires once every write submitted so far has
            finished.
        """
        return self._pending_writes.idle()

    def close(self):
        """
        Wait for submitted writes to finish, then stop the threads and close
        the database.
        """
        if self._writer_pool is None:
            return succeed(None)
        return self.drained().addCallback(lambda _: self._shut_down())

    def _shut_down(self):
        writer_pool, reader_pool = self._writer_pool, self._reader_pool
        self._writer_pool = self._reader_pool = None
        if self._writer_connection is not None:
            connection = self._writer_connection
            self._writer_connection = None
            writer_pool.callInThread(connection.close)
        # The queues are empty: joining the idle threads is immediate.
        writer_pool.stop()
        reader_pool.stop()
        self._engine.dispose()

    def size_on_disk(self):
        """
        @return: bytes used by the database file and its WAL.
        """
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(self.database_path + suffix)
            except OSError:
                pass
        return total


def check_database(path):
    """
    Open the database in folder C{path} once, creating the folder and the
    tables if needed, before the reactor runs: a file that is not a
    database, or that cannot be written, is reported at start-up.

    @raise StoreError: with one line naming the file and the cause.
    """
    database_path = os.path.join(path, DATABASE_FILE)
    try:
        os.makedirs(path, exist_ok=True)
        engine = make_engine(database_path, 0)
        try:
            with engine.connect() as connection:
                connection.info["writer"] = True
                with connection.begin():
                    schema.metadata.create_all(connection)
                    read_applied_index(connection)
        finally:
            engine.dispose()
    except (OSError, SQLAlchemyError) as error:
        cause = getattr(error, "orig", None) or error
        raise StoreError(f"cannot open database {database_path!r}: {cause}") from None


def _deliver(group, outcomes):
    for (_, _, _, result), (succeeded, value) in zip(group, outcomes):
        if succeeded:
            result.callback(value)
        else:
            result.errback(value)


def read_applied_index(connection):
    """
    @return: the index of the last batch applied to this database, 0 if none.
    """
    return connection.execute(_SELECT_APPLIED_INDEX).scalar() or 0


_SELECT_APPLIED_INDEX = select(schema.node_state.c.value).where(
    schema.node_state.c.key == APPLIED_INDEX
)
