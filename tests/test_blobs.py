"""
Tests for L{stalwart_tw.store.blobs}: blob files, deduplication, the
garbage collector and its protections, crash safety and hash validation.

The blob store runs on a real Store and LocalNode (real threads on the
reactor trial runs) and a L{task.Clock} for expiry and scheduling.
"""

import os

from blake3 import blake3
from sqlalchemy import select
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from stalwart_tw.store import blobs as blobs_module
from stalwart_tw.store import schema
from stalwart_tw.store.batch import WriteBatch
from stalwart_tw.store.blobs import BlobStore, purge_interval
from stalwart_tw.store.errors import BlobMissing
from stalwart_tw.writer import AccountWriter
from tests.support import open_store_and_node

TTL = 3600


def _read_table(connection, table):
    return [tuple(row) for row in connection.execute(select(table))]


def _blob_files(root):
    # Every file under root except root/tmp, as paths relative to root.
    found = []
    for folder, subfolders, files in os.walk(root):
        if folder == root:
            subfolders[:] = [name for name in subfolders if name != "tmp"]
        found.extend(os.path.relpath(os.path.join(folder, name), root) for name in files)
    return sorted(found)


def _tmp_files(root):
    tmp = os.path.join(root, "tmp")
    return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []


class _BlobFixture:
    """
    A started Store and LocalNode and a BlobStore on a fresh folder. The
    BlobStore is started only where C{start_blobs} says so: a started one
    purges whenever a test advances the clock, concurrently with the
    purges the test runs itself.
    """

    nested_levels = 2
    start_blobs = False

    @inlineCallbacks
    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.store, self.node = yield open_store_and_node(self, self.path)
        self.clock = task.Clock()
        self.root = os.path.join(self.path, "blobs")
        self.blobs = self.make_blob_store()
        if self.start_blobs:
            yield self.blobs.startService()

    @inlineCallbacks
    def tearDown(self):
        if self.blobs.running:
            yield self.blobs.stopService()

    def make_blob_store(self, nested_levels=None, root=None, **kwargs):
        return BlobStore(
            self.root if root is None else root,
            self.nested_levels if nested_levels is None else nested_levels,
            TTL,
            self.store,
            AccountWriter(self.store, self.node),
            clock=self.clock,
            **kwargs,
        )

    @inlineCallbacks
    def put_and_reference(self, data, count=1):
        """
        Put C{data} and commit a batch taking C{count} references on it.
        """
        blob_hash, size = yield self.blobs.put(data)
        try:
            yield self.node.commit(WriteBatch().reference_blob(blob_hash, size, count=count))
        finally:
            self.blobs.release_in_flight(blob_hash)
        return blob_hash

    def release(self, blob_hash, count=1):
        return self.node.commit(WriteBatch().release_blob(blob_hash, count=count))

    def temp_rows(self):
        # (account, hash, expiry): uploads here are by the account's own principal.
        def read(connection):
            rows = _read_table(connection, schema.blob_temp)
            for account_id, blob_hash, principal_id, expires_at in rows:
                self.assertEqual(principal_id, account_id)
            return [(a, h, e) for a, h, _, e in rows]

        return self.store.read(read)

    def write_orphan(self, data):
        """
        Leave a complete blob file with no rows, as a crash after the put and
        before the batch would.
        """
        blob_hash = blake3(data).hexdigest()
        path = self.blobs.path_for(blob_hash)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as blob_file:
            blob_file.write(data)
        return blob_hash


class PutTests(_BlobFixture, unittest.TestCase):
    """
    L{BlobStore.put} and the layout of blob files.
    """

    @inlineCallbacks
    def test_put_returns_blake3_hex_and_writes_nested_file(self):
        """put answers the BLAKE3 hex digest and size; the file sits two levels deep."""
        data = b"hello blobs"
        blob_hash, size = yield self.blobs.put(data)
        self.blobs.release_in_flight(blob_hash)
        self.assertEqual(blob_hash, blake3(data).hexdigest())
        self.assertEqual(size, len(data))
        expected = os.path.join(self.root, blob_hash[0:2], blob_hash[2:4], blob_hash)
        self.assertEqual(self.blobs.path_for(blob_hash), expected)
        with open(expected, "rb") as blob_file:
            self.assertEqual(blob_file.read(), data)
        self.assertTrue(self.blobs.exists(blob_hash))
        self.assertEqual((yield self.blobs.read(blob_hash)), data)
        self.assertEqual(_tmp_files(self.root), [])

    @inlineCallbacks
    def test_zero_levels(self):
        """With nested_levels 0 the file sits directly in the root folder."""
        blob_store = self.make_blob_store(nested_levels=0, root=os.path.abspath(self.mktemp()))
        blob_hash, _ = yield blob_store.put(b"flat")
        self.assertEqual(_blob_files(blob_store.root), [blob_hash])

    @inlineCallbacks
    def test_three_levels(self):
        """With nested_levels 3 the file sits under three two-character folders."""
        blob_store = self.make_blob_store(nested_levels=3, root=os.path.abspath(self.mktemp()))
        blob_hash, _ = yield blob_store.put(b"deep")
        self.assertEqual(
            _blob_files(blob_store.root),
            [os.path.join(blob_hash[0:2], blob_hash[2:4], blob_hash[4:6], blob_hash)],
        )

    @inlineCallbacks
    def test_dedup(self):
        """The same content stored twice gives the same hash and one file."""
        first = yield self.blobs.put(b"same content")
        second = yield self.blobs.put(b"same content")
        self.assertEqual(first, second)
        self.assertEqual(len(_blob_files(self.root)), 1)
        self.assertEqual(self.blobs.in_flight(first[0]), 2)

    @inlineCallbacks
    def test_dedup_during_concurrent_write_syncs_folder(self):
        """A put that finds a file whose writer has not fsync'd its folder yet fsyncs it."""
        blob_hash, _ = yield self.blobs.put(b"racing writers")
        synced = []
        self.patch(blobs_module, "_fsync", lambda fd: synced.append(fd))
        self.blobs._unsynced.add(blob_hash)
        yield self.blobs.put(b"racing writers")
        self.assertEqual(len(synced), 1)
        self.blobs._unsynced.clear()
        yield self.blobs.put(b"racing writers")
        self.assertEqual(len(synced), 1)

    @inlineCallbacks
    def test_empty_blob(self):
        """An empty blob is a valid blob of size 0."""
        blob_hash, size = yield self.blobs.put(b"")
        self.assertEqual((blob_hash, size), (blake3(b"").hexdigest(), 0))
        self.assertEqual((yield self.blobs.read(blob_hash)), b"")

    def test_put_refuses_text(self):
        """put of a str fails with TypeError instead of guessing an encoding."""
        self.failureResultOf(self.blobs.put("text"), TypeError)

    @inlineCallbacks
    def test_injected_threadpool(self):
        """An injected thread pool does the file I/O."""
        pool = ThreadPool(1, 1, name="test-blobs")
        pool.start()
        self.addCleanup(pool.stop)
        blob_store = self.make_blob_store(threadpool=pool)
        blob_hash, _ = yield blob_store.put(b"pooled")
        self.assertEqual((yield blob_store.read(blob_hash)), b"pooled")

    @inlineCallbacks
    def test_size_on_disk(self):
        """size_on_disk sums the sizes of the blob files."""
        yield self.blobs.put(b"12345")
        yield self.blobs.put(b"123")
        self.assertEqual((yield self.blobs.size_on_disk()), 8)

    def test_invalid_settings(self):
        """Negative or excessive nested levels and a zero TTL are refused."""
        for levels, ttl in [(-1, TTL), (33, TTL), (2, 0)]:
            self.assertRaises(
                ValueError, BlobStore, self.root, levels, ttl, self.store, self.node, self.clock
            )


class HashTests(_BlobFixture, unittest.TestCase):
    """
    Hashes that are unknown or not hashes at all.
    """

    malformed = [
        "../etc/passwd",
        "../" * 21 + "a",
        "A" * 64,
        "ab" * 31,
        "a" * 65,
        "g" * 64,
        "a" * 63 + "\n",
        "",
        None,
        42,
    ]

    def test_malformed_path_for(self):
        """path_for raises BlobMissing for anything but 64 lower-case hex characters."""
        for value in self.malformed:
            self.assertRaises(BlobMissing, self.blobs.path_for, value)

    def test_malformed_read(self):
        """read of a malformed hash fails with BlobMissing before touching the disk."""
        for value in self.malformed:
            self.failureResultOf(self.blobs.read(value), BlobMissing)

    def test_malformed_exists_and_hold(self):
        """exists says no and hold raises BlobMissing for malformed hashes."""
        for value in self.malformed:
            self.assertFalse(self.blobs.exists(value))
            self.assertRaises(BlobMissing, self.blobs.hold, value)

    @inlineCallbacks
    def test_read_unknown(self):
        """read of a well-formed hash with no file fails with BlobMissing."""
        yield self.assertFailure(self.blobs.read("0" * 64), BlobMissing)
        self.assertFalse(self.blobs.exists("0" * 64))


class RefcountTests(_BlobFixture, unittest.TestCase):
    """
    Committed references keep blob files alive.
    """

    @inlineCallbacks
    def test_references_keep_blob(self):
        """Two references minus one keep the file; releasing the last lets purge delete it."""
        blob_hash = yield self.put_and_reference(b"counted", count=2)
        yield self.release(blob_hash)
        self.assertEqual((yield self.blobs.purge()), 0)
        self.assertTrue(self.blobs.exists(blob_hash))
        yield self.release(blob_hash)
        self.assertEqual((yield self.blobs.purge()), 1)
        self.assertFalse(self.blobs.exists(blob_hash))
        yield self.assertFailure(self.blobs.read(blob_hash), BlobMissing)


class TempBlobTests(_BlobFixture, unittest.TestCase):
    """
    Uploads live in blob_temp until they expire.
    """

    @inlineCallbacks
    def test_upload_expires(self):
        """An upload survives purges until temp_ttl has passed, then row and file go."""
        self.clock.advance(1000)
        blob_hash, size, expires_at = yield self.blobs.put_temporary(7, b"upload")
        self.assertEqual((size, expires_at), (6, 1000 + TTL))
        self.assertEqual((yield self.temp_rows()), [(7, blob_hash, 1000 + TTL)])
        self.assertEqual(self.blobs.in_flight(blob_hash), 0)
        self.clock.advance(TTL - 1)
        self.assertEqual((yield self.blobs.purge()), 0)
        self.assertTrue(self.blobs.exists(blob_hash))
        self.clock.advance(1)
        self.assertEqual((yield self.blobs.purge()), 1)
        self.assertFalse(self.blobs.exists(blob_hash))
        self.assertEqual((yield self.temp_rows()), [])

    @inlineCallbacks
    def test_expired_upload_not_visible_before_the_purge(self):
        """Past temp_ttl an upload is no one's to use, though no purge has run yet."""
        from stalwart_tw.jmap.core import BlobAccess

        access = BlobAccess(
            self.blobs, self.store, AccountWriter(self.store, self.node), self.clock, 10
        )
        blob_hash, _, _ = yield self.blobs.put_temporary(7, b"short-lived")
        self.clock.advance(TTL - 1)
        self.assertEqual((yield access.visible(7, 7, [blob_hash])), {blob_hash})
        self.clock.advance(1)
        self.assertEqual((yield access.visible(7, 7, [blob_hash])), set())
        self.assertEqual(len((yield self.temp_rows())), 1)

    @inlineCallbacks
    def test_reupload_refreshes_expiry(self):
        """Uploading the same content again moves the expiry; the file outlives the first one."""
        blob_hash, _, first = yield self.blobs.put_temporary(7, b"again")
        self.clock.advance(TTL - 10)
        _, _, second = yield self.blobs.put_temporary(7, b"again")
        self.assertEqual(second, first + TTL - 10)
        self.assertEqual((yield self.temp_rows()), [(7, blob_hash, second)])
        self.clock.advance(10)
        self.assertEqual((yield self.blobs.purge()), 0)
        self.assertTrue(self.blobs.exists(blob_hash))
        self.clock.advance(TTL)
        self.assertEqual((yield self.blobs.purge()), 1)

    @inlineCallbacks
    def test_uploads_of_two_accounts(self):
        """The same content uploaded by two accounts lives until both rows expire."""
        blob_hash, _, _ = yield self.blobs.put_temporary(1, b"shared")
        self.clock.advance(100)
        yield self.blobs.put_temporary(2, b"shared")
        self.clock.advance(TTL - 100)
        self.assertEqual((yield self.blobs.purge()), 0)
        self.assertEqual((yield self.temp_rows()), [(2, blob_hash, 100 + TTL)])
        self.clock.advance(100)
        self.assertEqual((yield self.blobs.purge()), 1)

    @inlineCallbacks
    def test_referenced_upload_survives_expiry(self):
        """An upload that a committed batch references outlives its temp row."""
        blob_hash, size, _ = yield self.blobs.put_temporary(7, b"kept")
        self.blobs.hold(blob_hash)
        try:
            yield self.node.commit(WriteBatch().reference_blob(blob_hash, size))
        finally:
            self.blobs.release_in_flight(blob_hash)
        self.clock.advance(TTL)
        self.assertEqual((yield self.blobs.purge()), 0)
        self.assertEqual((yield self.temp_rows()), [])
        self.assertEqual((yield self.blobs.read(blob_hash)), b"kept")

    @inlineCallbacks
    def test_nothing_expired_commits_nothing(self):
        """A purge with no expired upload commits no batch."""
        yield self.blobs.put_temporary(7, b"fresh")
        index = self.node.applied_index
        yield self.blobs.purge()
        self.assertEqual(self.node.applied_index, index)


class InFlightTests(_BlobFixture, unittest.TestCase):
    """
    Blobs between their put and their batch are never collected.
    """

    @inlineCallbacks
    def test_in_flight_not_collected(self):
        """A put not yet released survives purge; once released with no rows it goes."""
        blob_hash, _ = yield self.blobs.put(b"flying")
        self.assertEqual((yield self.blobs.purge()), 0)
        self.assertTrue(self.blobs.exists(blob_hash))
        self.blobs.release_in_flight(blob_hash)
        self.assertEqual((yield self.blobs.purge()), 1)
        self.assertFalse(self.blobs.exists(blob_hash))

    @inlineCallbacks
    def test_every_put_counts(self):
        """Two puts of the same content need two releases before the file may go."""
        blob_hash, _ = yield self.blobs.put(b"twice")
        yield self.blobs.put(b"twice")
        self.blobs.release_in_flight(blob_hash)
        self.assertEqual((yield self.blobs.purge()), 0)
        self.blobs.release_in_flight(blob_hash)
        self.assertEqual((yield self.blobs.purge()), 1)

    def test_release_unknown(self):
        """Releasing a hash that is not in flight is a programming error."""
        self.assertRaises(ValueError, self.blobs.release_in_flight, "0" * 64)

    @inlineCallbacks
    def test_hold(self):
        """hold protects a stored blob with no rows; it refuses a blob with no file."""
        blob_hash = self.write_orphan(b"held")
        self.blobs.hold(blob_hash)
        self.assertEqual((yield self.blobs.purge()), 0)
        self.blobs.release_in_flight(blob_hash)
        self.assertEqual((yield self.blobs.purge()), 1)
        self.assertRaises(BlobMissing, self.blobs.hold, blob_hash)
        self.assertEqual(self.blobs.in_flight(blob_hash), 0)

    @inlineCallbacks
    def test_commit_during_purge(self):
        """A blob put, committed and released after purge read the live rows is spared."""
        real_read = self.store.read
        committed = []

        @inlineCallbacks
        def read_then_commit(function, *args):
            result = yield real_read(function, *args)
            if function is blobs_module._read_live_hashes:
                committed.append((yield self.put_and_reference(b"racing")))
            return result

        self.patch(self.store, "read", read_then_commit)
        self.assertEqual((yield self.blobs.purge()), 0)
        self.assertTrue(self.blobs.exists(committed[0]))
        self.patch(self.store, "read", real_read)
        self.assertEqual((yield self.blobs.purge()), 0)
        self.assertTrue(self.blobs.exists(committed[0]))


class OrphanTests(_BlobFixture, unittest.TestCase):
    """
    Files that no row and no put account for.
    """

    @inlineCallbacks
    def test_orphan_collected(self):
        """A complete blob file with no rows (crash before the batch) is deleted by purge."""
        blob_hash = self.write_orphan(b"orphan")
        kept = yield self.put_and_reference(b"kept")
        self.assertEqual((yield self.blobs.purge()), 1)
        self.assertFalse(self.blobs.exists(blob_hash))
        self.assertTrue(self.blobs.exists(kept))

    @inlineCallbacks
    def test_foreign_files_left_alone(self):
        """Files that are not blob files of this layout are never deleted."""
        foreign = os.path.join(self.root, "README")
        misplaced = os.path.join(self.root, "ab", "0" * 64)
        os.makedirs(os.path.dirname(misplaced), exist_ok=True)
        for path in (foreign, misplaced):
            with open(path, "wb") as stray:
                stray.write(b"x")
        self.assertEqual((yield self.blobs.purge()), 0)
        self.assertTrue(os.path.exists(foreign))
        self.assertTrue(os.path.exists(misplaced))


class CrashTests(_BlobFixture, unittest.TestCase):
    """
    A write interrupted at any point never leaves a partial file under its
    final name.
    """

    @inlineCallbacks
    def check_failed_put(self, name):
        def broken(*args):
            raise OSError(5, "simulated I/O error")

        self.patch(blobs_module, name, broken)
        data = b"interrupted by " + name.encode()
        blob_hash = blake3(data).hexdigest()
        yield self.assertFailure(self.blobs.put(data), OSError)
        self.assertFalse(os.path.exists(self.blobs.path_for(blob_hash)))
        self.assertEqual(_blob_files(self.root), [])
        self.assertEqual(_tmp_files(self.root), [])
        self.assertEqual(self.blobs.in_flight(blob_hash), 0)

    def test_fsync_fails(self):
        """A failing fsync fails the put, leaves no final file and removes the temp file."""
        return self.check_failed_put("_fsync")

    def test_rename_fails(self):
        """A failing rename fails the put, leaves no final file and removes the temp file."""
        return self.check_failed_put("_rename")

    @inlineCallbacks
    def test_crash_leftovers_cleaned_at_start(self):
        """What a crash leaves in root/tmp is removed by the next startService."""
        def crash(*args):
            raise OSError(5, "simulated crash")

        self.patch(blobs_module, "_fsync", crash)
        # A crash skips the cleanup of the failed write.
        self.patch(blobs_module, "_discard", lambda path: None)
        blob_hash = blake3(b"crashed").hexdigest()
        yield self.assertFailure(self.blobs.put(b"crashed"), OSError)
        self.assertFalse(self.blobs.exists(blob_hash))
        self.assertEqual(len(_tmp_files(self.root)), 1)
        with open(os.path.join(self.root, "tmp", "truncated"), "wb") as partial:
            partial.write(b"cras")
        self.patch(blobs_module, "_discard", os.unlink)
        self.blobs = self.make_blob_store()
        yield self.blobs.startService()
        self.assertEqual(_tmp_files(self.root), [])
        self.assertFalse(self.blobs.exists(blob_hash))

    @inlineCallbacks
    def test_cleaning_spares_own_writes(self):
        """Startup cleaning removes only files of earlier runs, not a put of this one."""
        blob_store = self.make_blob_store()
        own = os.path.join(self.root, "tmp", blob_store._tmp_prefix + "0")
        os.makedirs(os.path.dirname(own))
        with open(own, "wb") as in_progress:
            in_progress.write(b"partial")
        yield blob_store.startService()
        yield blob_store.stopService()
        self.assertEqual(_tmp_files(self.root), [os.path.basename(own)])


class ScheduleTests(_BlobFixture, unittest.TestCase):
    """
    The LoopingCall that runs purges on the injected clock.
    """

    interval = purge_interval(TTL)
    start_blobs = True

    def record_purges(self, blob_store):
        """
        @return: a list that gets, for each purge, a Deferred of its result
            (the LoopingCall consumes the result of the purge's own).
        """
        runs = []
        real_purge = blob_store.purge

        def recording_purge():
            result = real_purge()
            observed = Deferred()

            def observe(outcome):
                # One reactor turn later: once the LoopingCall has seen the
                # purge end and scheduled the next one.
                reactor.callLater(0, observed.callback, outcome)
                return outcome

            runs.append(observed)
            return result.addBoth(observe)

        self.patch(blob_store, "purge", recording_purge)
        return runs

    def test_interval(self):
        """The interval is temp_ttl capped at 300 seconds and at least 1."""
        self.assertEqual(
            [purge_interval(ttl) for ttl in (1, 60, 300, 3600)], [1, 60, 300, 300]
        )

    @inlineCallbacks
    def test_loop_purges(self):
        """Advancing the clock runs a purge, which expires an old upload; none runs at start."""
        runs = self.record_purges(self.blobs)
        blob_hash, _, _ = yield self.blobs.put_temporary(7, b"scheduled")
        self.clock.advance(self.interval - 1)
        self.assertEqual(runs, [])
        self.clock.advance(1)
        self.assertEqual(len(runs), 1)
        self.assertEqual((yield runs[0]), 0)
        self.clock.advance(TTL)
        self.assertEqual(len(runs), 2)
        self.assertEqual((yield runs[1]), 1)
        self.assertFalse(self.blobs.exists(blob_hash))

    @inlineCallbacks
    def test_failed_purge_logged_loop_continues(self):
        """A purge that fails is logged and the next interval purges again."""
        calls = []

        def failing_purge():
            calls.append(None)
            raise RuntimeError("purge broke")

        self.patch(self.blobs, "purge", lambda: task.deferLater(self.clock, 0, failing_purge))
        self.clock.advance(self.interval)
        self.clock.advance(0)
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(self.interval)
        self.clock.advance(0)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        yield self.blobs.stopService()

    @inlineCallbacks
    def test_stop_waits_for_purge(self):
        """stopService fires only after a purge in progress has finished, and stops the loop."""
        gate = Deferred()
        real_read = self.store.read

        @inlineCallbacks
        def slow_read(function, *args):
            yield gate
            return (yield real_read(function, *args))

        self.patch(self.store, "read", slow_read)
        purged = self.blobs.purge()
        stopped = self.blobs.stopService()
        self.assertNoResult(stopped)
        gate.callback(None)
        yield purged
        yield stopped
        runs = self.record_purges(self.blobs)
        self.clock.advance(self.interval * 3)
        self.assertEqual(runs, [])
