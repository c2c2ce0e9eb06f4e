"""
Content-addressed blob files: one file per distinct content, named by its
BLAKE3 hex digest, under C{nested_levels} levels of folders named by the
digest's leading hex pairs (C{root/ab/cd/abcd...}), so that no folder grows
too large.

Writing a blob. Everything touching the disk runs on a thread, never on the
reactor. A new file is written under a unique name in C{root/tmp}, flushed
and fsync'd, renamed to its final name and its folder fsync'd. A crash at any
point leaves either nothing or a complete file under the final name, never a
truncated one; what a crash leaves in C{root/tmp} is removed at startup. A
blob whose file already exists is not written again (deduplication): a file
under its final name is complete, by the rule just stated.

What keeps a file alive. The database holds the references: a C{blobs} row
(refcount > 0) for blobs that committed data uses, and a C{blob_temp} row for
an upload that no data uses yet, until it expires. Between the moment a put
stores a file and the moment a committed batch names it, nothing in the
database protects the file, so the hash is I{in flight}: an in-memory counter
per hash, raised by L{BlobStore.put} (or L{BlobStore.hold}) and lowered by
L{BlobStore.release_in_flight} once the batch is committed (or failed). The
garbage collector never deletes an in-flight blob. We track this explicitly
rather than sparing "recent" files by their mtime because our clock is
injected (a C{task.Clock} in tests, and the same clock must drive expiry),
while file mtimes come from the operating system's clock: mixing the two
would make the collector depend on real time and on clock skew.

The collector (L{BlobStore.purge}) works in two steps:
  1. Temp rows whose C{expires_at} has passed are deleted by a committed
     WriteBatch that lists each row (with its C{expires_at}, so that an
     upload refreshed in the meantime is left alone). The rows are data:
     in a cluster every node must agree on them, so they change only through
     the log like any other write. The expiry instant is computed here from
     the injected clock and carried in the batch, never by the database.
  2. On a thread, every blob file of this node whose hash has no C{blobs} row,
     no C{blob_temp} row and is not in flight is deleted. Files are local:
     each node deletes its own, from its own applied rows, with no batch.

The race between step 2 and a writer: the collector reads the set of live
hashes, then walks the files. A put that finished and committed after that
read has a row the collector did not see; so from just before the read until
the walk ends, every hash that is or becomes in flight is remembered, and
spared even if released meanwhile. The in-flight check and the deletion of
a file happen under one lock, and a put marks its hash in flight under the
same lock before it checks whether the file exists, so a file that a put
counts on as already stored is never deleted under it.

Contract for callers: reference a blob in a batch only while you hold it in
flight (from L{BlobStore.put}, or L{BlobStore.hold} for a blob stored
earlier), and release it once the commit has succeeded or failed.

Scheduling: startService runs a C{LoopingCall} of L{BlobStore.purge} on the
injected clock every C{max(1, min(temp_ttl, 300))} seconds. The first purge
runs one interval after start, not at start: a node that has just started is
busy catching up, and nothing in a purge is urgent. Purges never overlap. A
failed purge is logged and the loop goes on.

Changing C{nested_levels} on a node that holds blobs requires moving the files:
a file outside its expected place is neither found nor collected.
"""

import itertools
import os
import re
import threading
import uuid
from collections import Counter

from blake3 import blake3
from sqlalchemy import select
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, fail, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool

from stalwart_tw.logs import Logger
from stalwart_tw.store import schema
from stalwart_tw.store.batch import WriteBatch
from stalwart_tw.store.errors import BlobMissing

__all__ = ["BlobStore", "is_blob_hash", "purge_interval"]

TMP_FOLDER = "tmp"
# Bytes read or written at a time when a blob is streamed.
STREAM_CHUNK = 256 * 1024

# At most this many expired temp rows are deleted by one purge, so that one
# batch stays small enough for a Raft entry; the rest go in the next purge.
EXPIRY_BATCH_LIMIT = 5000

# At most 32 levels: a level takes two of the digest's 64 hex characters.
MAX_NESTED_LEVELS = 32

_BLOB_HASH = re.compile(r"[0-9a-f]{64}")
_LEVEL_NAME = re.compile(r"[0-9a-f]{2}")

# The file operations a crash can interrupt, looked up at call time so that
# tests can make them fail (self.patch(blobs, "_fsync", ...)).
_fsync = os.fsync
_rename = os.rename


def _discard(path):
    # Best-effort removal of a temporary file after a failed write; a crash
    # skips it, and startup cleaning catches what is left.
    try:
        os.unlink(path)
    except OSError:
        pass


def _settled(deferred):
    # A new Deferred that fires with None once deferred has fired, leaving
    # deferred's own result to its other users.
    waiter = Deferred()

    def fire(result):
        waiter.callback(None)
        return result

    deferred.addBoth(fire)
    return waiter


def is_blob_hash(value):
    """
    @return: whether C{value} is a blob id: 64 lower-case hex characters.
    """
    return isinstance(value, str) and _BLOB_HASH.fullmatch(value) is not None


def purge_interval(temp_ttl):
    """
    @return: seconds between two scheduled purges for a temp blob lifetime.
    """
    return max(1, min(temp_ttl, 300))


def _fsync_folder(path):
    # A rename or a new entry is durable only once its folder is fsync'd.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _make_folders(root, parts):
    # Create each missing level and fsync its parent, so that the entry of a
    # new folder survives power loss along with the file put in it.
    path = root
    for part in parts:
        parent, path = path, os.path.join(path, part)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        _fsync_folder(parent)
    return path


def _read_expired(connection, now, limit):
    table = schema.blob_temp
    rows = connection.execute(
        select(table.c.account_id, table.c.blob_hash, table.c.principal_id, table.c.expires_at)
        .where(table.c.expires_at <= now)
        .order_by(table.c.expires_at, table.c.account_id, table.c.blob_hash,
                  table.c.principal_id)
        .limit(limit)
    )
    return [tuple(row) for row in rows]


def _read_live_hashes(connection):
    live = set(connection.execute(select(schema.blobs.c.blob_hash)).scalars())
    live.update(connection.execute(select(schema.blob_temp.c.blob_hash)).scalars())
    return live


class BlobStore(Service):
    """
    The blob files of one node, and their garbage collector.

    @ivar root: the folder of the blob files.
    @ivar nested_levels: the number of folder levels above each file.
    @ivar temp_ttl: seconds an upload lives without a reference.
    """

    log = Logger()
    name = "blobs"

    def __init__(
        self,
        root,
        nested_levels,
        temp_ttl,
        store,
        writer,
        clock=None,
        threadpool=None,
        reactor=None,
    ):
        """
        @param store: the L{Store} whose rows say which blobs are alive.
        @param writer: the L{AccountWriter} that upload rows and expiry
            batches are committed through.
        @param clock: the IReactorTime for expiry and scheduling; the
            reactor by default.
        @param threadpool: a started ThreadPool for file I/O, owned by the
            caller; the reactor's thread pool by default.
        @param reactor: the reactor that delivers the results of threads;
            the global reactor by default.
        """
        if not isinstance(nested_levels, int) or not 0 <= nested_levels <= MAX_NESTED_LEVELS:
            raise ValueError(f"nested_levels must be 0 to {MAX_NESTED_LEVELS}: {nested_levels!r}")
        if not isinstance(temp_ttl, int) or temp_ttl < 1:
            raise ValueError(f"temp_ttl must be a positive number of seconds: {temp_ttl!r}")
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._threadpool = threadpool
        self.root = root
        self.nested_levels = nested_levels
        self.temp_ttl = temp_ttl
        self._store = store
        self._writer = writer
        self._tmp = os.path.join(root, TMP_FOLDER)
        # Temporary files of this instance start with this; startup cleaning
        # removes only the others, so it never races a put of ours.
        self._tmp_prefix = uuid.uuid4().hex + "-"
        self._tmp_numbers = itertools.count()
        # Guards _in_flight, _spared and _unsynced, and makes "not in flight,
        # delete" one step against "mark in flight, then check the file
        # exists".
        self._lock = threading.Lock()
        # Hash -> number of puts/holds not yet released.
        self._in_flight = Counter()
        # While a purge collects: every hash in flight since it read the
        # live rows; None otherwise.
        self._spared = None
        # Hashes whose new file a put has renamed or is about to rename, but
        # whose folder is not fsync'd yet.
        self._unsynced = set()
        self._purge_lock = DeferredLock()
        self._loop = None
        self._cleaning = None

    # -- service ----------------------------------------------------------

    def startService(self):
        """
        Remove what a crash left in C{root/tmp} (on a thread) and start the
        scheduled purges.

        @return: a Deferred that fires once the leftovers are removed.
        """
        super().startService()
        self._cleaning = self._in_thread(self._clean_tmp)
        self._cleaning.addErrback(self._log_failure, "cleaning the blob tmp folder failed")
        self._loop = LoopingCall(self._scheduled_purge)
        self._loop.clock = self._clock
        self._loop.start(purge_interval(self.temp_ttl), now=False)
        return self._cleaning

    def stopService(self):
        """
        Stop the scheduled purges.

        @return: a Deferred that fires once a purge in progress (and the
            startup cleaning) has finished.
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        cleaning, self._cleaning = self._cleaning, None
        idle = self._purge_lock.acquire().addCallback(lambda lock: lock.release())
        if cleaning is not None:
            idle.addCallback(lambda _: _settled(cleaning))
        return idle.addCallback(lambda _: None)

    def _clean_tmp(self):
        os.makedirs(self._tmp, exist_ok=True)
        removed = 0
        for entry in os.scandir(self._tmp):
            if entry.name.startswith(self._tmp_prefix) or not entry.is_file(follow_symlinks=False):
                continue
            _discard(entry.path)
            removed += 1
        if removed:
            self.log.info("removed {count} unfinished blob files", count=removed)
        return removed

    def _scheduled_purge(self):
        return self.purge().addErrback(self._log_failure, "blob purge failed")

    def _log_failure(self, failure, message):
        self.log.failure(message, failure)

    def _in_thread(self, function, *args):
        pool = self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, function, *args)

    # -- names ------------------------------------------------------------

    def path_for(self, blob_hash):
        """
        @return: the path of the file of C{blob_hash} (which may not exist).
        @raise BlobMissing: C{blob_hash} is not a blob id; nothing that is
            not one ever reaches the file system.
        """
        if not is_blob_hash(blob_hash):
            raise BlobMissing(f"not a blob id: {blob_hash!r}")
        return os.path.join(self.root, *self._levels(blob_hash), blob_hash)

    def _levels(self, blob_hash):
        return [blob_hash[2 * level : 2 * level + 2] for level in range(self.nested_levels)]

    def exists(self, blob_hash):
        """
        @return: whether this node has the file of C{blob_hash}; C{False}
            for anything that is not a blob id.
        """
        if not is_blob_hash(blob_hash):
            return False
        return os.path.isfile(self.path_for(blob_hash))

    # -- writing ----------------------------------------------------------

    def put(self, data):
        """
        Store C{data} (unless a file with that content exists) and mark its
        hash in flight; the caller calls L{release_in_flight} once a batch
        referencing it is committed or has failed.

        @param data: bytes, or a binary file read from where it stands, a
            chunk at a time (so a large upload is never whole in memory),
            and closed once read.
        @return: a Deferred firing with C{(blob_hash, size)} once the file is
            durable.
        """
        if hasattr(data, "read"):
            return self._in_thread(self._put_file, data)
        if not isinstance(data, (bytes, bytearray)):
            return fail(TypeError(f"a blob is bytes, not {type(data).__name__}"))
        return self._in_thread(self._put, bytes(data))

    def _put_file(self, source):
        # Hashed and copied in one pass; the name is known only at the end.
        hasher, size = blake3(), 0
        tmp_path = self._new_tmp_path()
        try:
            with source, open(tmp_path, "xb") as tmp_file:
                while chunk := source.read(STREAM_CHUNK):
                    hasher.update(chunk)
                    tmp_file.write(chunk)
                    size += len(chunk)
                tmp_file.flush()
                _fsync(tmp_file.fileno())
        except BaseException:
            _discard(tmp_path)
            raise
        blob_hash = hasher.hexdigest()
        self._mark_in_flight(blob_hash)
        try:
            final_path = self.path_for(blob_hash)
            if os.path.isfile(final_path):
                _discard(tmp_path)
                if self._is_unsynced(blob_hash):
                    _fsync_folder(os.path.dirname(final_path))
            else:
                self._install(blob_hash, tmp_path, final_path)
        except BaseException:
            _discard(tmp_path)
            self.release_in_flight(blob_hash)
            raise
        return blob_hash, size

    def _put(self, data):
        blob_hash = blake3(data).hexdigest()
        self._mark_in_flight(blob_hash)
        try:
            final_path = self.path_for(blob_hash)
            # Marked before this check: a purge cannot delete the file after
            # we saw it (see the module docstring).
            if not os.path.isfile(final_path):
                self._write_new(blob_hash, final_path, data)
            elif self._is_unsynced(blob_hash):
                # A concurrent put of the same content renamed the file but
                # has not fsync'd its folder yet: do it rather than answer
                # "durable" for a rename that power loss could undo.
                _fsync_folder(os.path.dirname(final_path))
        except BaseException:
            self.release_in_flight(blob_hash)
            raise
        return blob_hash, len(data)

    def _is_unsynced(self, blob_hash):
        with self._lock:
            return blob_hash in self._unsynced

    def _new_tmp_path(self):
        os.makedirs(self._tmp, exist_ok=True)
        return os.path.join(self._tmp, f"{self._tmp_prefix}{next(self._tmp_numbers)}")

    def _write_new(self, blob_hash, final_path, data):
        tmp_path = self._new_tmp_path()
        try:
            with open(tmp_path, "xb") as tmp_file:
                tmp_file.write(data)
                tmp_file.flush()
                _fsync(tmp_file.fileno())
        except BaseException:
            _discard(tmp_path)
            raise
        self._install(blob_hash, tmp_path, final_path)

    def _install(self, blob_hash, tmp_path, final_path):
        # A durable temporary file becomes the blob's, durably.
        try:
            folder = _make_folders(self.root, self._levels(blob_hash))
        except BaseException:
            _discard(tmp_path)
            raise
        with self._lock:
            # A set, not a count: concurrent writers of one hash each remove
            # it after their own fsync, and any of those fsyncs suffices.
            self._unsynced.add(blob_hash)
        try:
            try:
                _rename(tmp_path, final_path)
            except BaseException:
                _discard(tmp_path)
                raise
            _fsync_folder(folder)
        finally:
            with self._lock:
                self._unsynced.discard(blob_hash)

    def put_temporary(self, account_id, data, principal_id=None):
        """
        Store an upload to C{account_id} by C{principal_id} (by default the
        account's own principal): the file, then a committed C{blob_temp}
        row that keeps it alive for C{temp_ttl} seconds. Uploading content
        again refreshes its expiry.

        @return: a Deferred firing with C{(blob_hash, size, expires_at)}.
        """
        uploader = account_id if principal_id is None else principal_id
        return self._put_temporary(account_id, data, uploader)

    @inlineCallbacks
    def _put_temporary(self, account_id, data, principal_id):
        blob_hash, size = yield self.put(data)
        try:
            expires_at = int(self._clock.seconds()) + self.temp_ttl
            yield self._writer.commit(
                temporary_rows(account_id, principal_id, [blob_hash], expires_at)
            )
        finally:
            self.release_in_flight(blob_hash)
        return blob_hash, size, expires_at

    # -- in flight --------------------------------------------------------

    def _mark_in_flight(self, blob_hash):
        with self._lock:
            self._in_flight[blob_hash] += 1
            if self._spared is not None:
                self._spared.add(blob_hash)

    def hold(self, blob_hash):
        """
        Mark a blob stored earlier in flight, so that no purge takes it while
        the caller builds and commits a batch that references it (an upload
        whose temp row may expire meanwhile, say). Release it with
        L{release_in_flight}.

        @raise BlobMissing: this node has no file for C{blob_hash}.
        """
        path = self.path_for(blob_hash)
        self._mark_in_flight(blob_hash)
        if not os.path.isfile(path):
            self.release_in_flight(blob_hash)
            raise BlobMissing(blob_hash)

    def release_in_flight(self, blob_hash):
        """
        End one put's (or hold's) claim on C{blob_hash}: from now on only
        rows keep it alive.

        @raise ValueError: C{blob_hash} is not in flight.
        """
        with self._lock:
            count = self._in_flight.get(blob_hash, 0)
            if count <= 0:
                raise ValueError(f"blob {blob_hash!r} is not in flight")
            if count == 1:
                del self._in_flight[blob_hash]
            else:
                self._in_flight[blob_hash] = count - 1

    def in_flight(self, blob_hash):
        """
        @return: how many puts or holds of C{blob_hash} are not yet released.
        """
        with self._lock:
            return self._in_flight.get(blob_hash, 0)

    # -- reading ----------------------------------------------------------

    def open(self, blob_hash):
        """
        @return: a Deferred firing with C{(binary file, size)} of
            C{blob_hash}, open for the caller to read (off the reactor) and
            close, or failing with L{BlobMissing}. An open file stays
            readable even if a purge removes its name meanwhile.
        """
        try:
            path = self.path_for(blob_hash)
        except BlobMissing:
            return fail()
        return self._in_thread(self._open, blob_hash, path)

    def _open(self, blob_hash, path):
        try:
            blob_file = open(path, "rb")
        except FileNotFoundError:
            raise BlobMissing(blob_hash) from None
        return blob_file, os.fstat(blob_file.fileno()).st_size

    def read(self, blob_hash):
        """
        @return: a Deferred firing with the content of C{blob_hash}, or
            failing with L{BlobMissing}.
        """
        try:
            path = self.path_for(blob_hash)
        except BlobMissing:
            return fail()
        return self._in_thread(self._read, blob_hash, path)

    def read_now(self, blob_hash):
        """
        The content of C{blob_hash}, read at once: for code that already
        runs on a worker thread (a reader building an Email/get).

        @raise BlobMissing: there is no such blob on this node.
        """
        return self._read(blob_hash, self.path_for(blob_hash))

    def in_thread(self, function, *args):
        """
        @return: a Deferred of C{function(*args)} run on the blob store's
            threads: CPU or disk work on blob content.
        """
        return self._in_thread(function, *args)

    def _read(self, blob_hash, path):
        try:
            with open(path, "rb") as blob_file:
                return blob_file.read()
        except FileNotFoundError:
            raise BlobMissing(blob_hash) from None

    def size_on_disk(self):
        """
        @return: a Deferred firing with the total size in bytes of the blob
            files (walked on a thread: there may be many).
        """
        return self._in_thread(lambda: sum(size for _, _, size in self._walk()))

    def _walk(self):
        # Yields (hash, path, size) for each file at its expected place.
        def visit(folder, depth):
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                return
            for entry in entries:
                if depth < self.nested_levels:
                    if _LEVEL_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                        yield from visit(entry.path, depth + 1)
                elif is_blob_hash(entry.name) and entry.is_file(follow_symlinks=False):
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
                    if self.path_for(entry.name) == entry.path:
                        yield entry.name, entry.path, size

        return visit(self.root, 0)

    # -- garbage collection -----------------------------------------------

    def purge(self):
        """
        Expire old uploads (through a committed batch), then delete the blob
        files of this node that nothing keeps alive. Purges never overlap: a
        call during a purge runs after it.

        @return: a Deferred firing with the number of files deleted.
        """
        return self._purge_lock.run(self._purge)

    @inlineCallbacks
    def _purge(self):
        now = int(self._clock.seconds())
        expired = yield self._store.read(_read_expired, now, EXPIRY_BATCH_LIMIT)
        if expired:
            batch = WriteBatch()
            for account_id, blob_hash, principal_id, expires_at in expired:
                # expires_at in the key: an upload refreshed since we read
                # keeps its row.
                batch.delete(
                    "blob_temp", account_id=account_id, blob_hash=blob_hash,
                    principal_id=principal_id, expires_at=expires_at,
                )
            yield self._writer.commit(batch)
        with self._lock:
            self._spared = set(self._in_flight)
        try:
            live = yield self._store.read(_read_live_hashes)
            deleted = yield self._in_thread(self._collect, live)
        finally:
            with self._lock:
                self._spared = None
        if deleted:
            self.log.info("purged {count} blob files", count=deleted)
        return deleted

    def _collect(self, live):
        deleted = 0
        for blob_hash, path, _ in self._walk():
            if blob_hash in live:
                continue
            with self._lock:
                if blob_hash in self._in_flight or blob_hash in self._spared:
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
            deleted += 1
        return deleted


def held_by(connection, account_id, principal_id, blob_hashes, now):
    """
    @param now: the time (seconds since the epoch) on the clock expiry is
        computed from: a row past its C{expires_at} holds nothing, even
        before a purge deletes it.
    @return: which of C{blob_hashes} the principal holds in the account (an
        upload of its own, or a copy it made, that has not expired).
    """
    table = schema.blob_temp
    rows = connection.execute(
        select(table.c.blob_hash).where(
            (table.c.account_id == account_id)
            & (table.c.principal_id == principal_id)
            & table.c.blob_hash.in_(sorted(blob_hashes))
            & (table.c.expires_at > now)
        )
    )
    return set(rows.scalars())


def temporary_rows(account_id, principal_id, blob_hashes, expires_at):
    """
    @return: a batch that (re)places the C{blob_temp} rows keeping blobs
        alive in an account for a principal until C{expires_at}.
    """
    batch = WriteBatch()
    for blob_hash in sorted(blob_hashes):
        key = {"account_id": account_id, "blob_hash": blob_hash, "principal_id": principal_id}
        batch.delete("blob_temp", **key)
        batch.insert("blob_temp", expires_at=expires_at, **key)
    return batch
