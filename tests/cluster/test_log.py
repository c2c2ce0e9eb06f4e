"""
Tests of the durable Raft log: round trips through a restart, checksums,
torn tails, compaction and snapshot installation, on a real SQLite file.
"""

import sqlite3

from sqlalchemy import insert, select
from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase

from stalwart_tw.cluster.log import (
    Entry,
    HardState,
    LoadedLog,
    LogCompacted,
    LogCorrupted,
    RaftLog,
)
from stalwart_tw.store import schema
from stalwart_tw.store.errors import StoreError
from tests.support import open_store_and_node


def make_entries(first, terms):
    """Entries from index C{first}, one per term in C{terms}, with distinct data."""
    return [
        Entry(term, first + offset, f"entry {first + offset}".encode() * 3)
        for offset, term in enumerate(terms)
    ]


def count_log_rows(connection):
    return len(connection.execute(select(schema.raft_log.c.index)).all())


def torn_tail_warnings(events):
    return [
        event
        for event in events
        if event.get("log_level") is LogLevel.warn
        and event.get("log_namespace", "").startswith("stalwart_tw.cluster.log")
    ]


class RaftLogTestMixin:
    """
    A log on a store in a folder of its own, and a way to restart it (close
    the store, optionally damage the file with plain SQL, open it again).
    """

    @inlineCallbacks
    def setUp(self):
        self.path = self.mktemp()
        yield self.open()

    @inlineCallbacks
    def open(self):
        self.store, self.node = yield open_store_and_node(self, self.path)
        self.log = RaftLog(self.store)

    @inlineCallbacks
    def restart(self, *damage):
        """Close the store, run each SQL statement of C{damage} on the file, reopen."""
        yield self.node.stopService()
        yield self.store.close()
        if damage:
            database = sqlite3.connect(self.store.database_path)
            try:
                for statement in damage:
                    database.execute(statement)
                database.commit()
            finally:
                database.close()
        yield self.open()


class RoundTripTests(RaftLogTestMixin, TestCase):
    """
    What is saved is what a restarted node loads.
    """

    @inlineCallbacks
    def test_fresh_log(self):
        """A node that never saved anything starts at term 0, no vote, no entries."""
        loaded = yield self.log.load()
        self.assertEqual(loaded, LoadedLog(HardState(0, None), 0, 0, []))

    @inlineCallbacks
    def test_round_trip(self):
        """Hard state and entries saved over several calls come back after a restart."""
        entries = make_entries(1, [1, 1, 2, 3, 3])
        yield self.log.save(HardState(2, "node-b"), entries[:2])
        yield self.log.save(HardState(3, None), entries[2:])
        # A no-op entry: empty data is a record like any other.
        yield self.log.save(append=[Entry(3, 6, b"")])
        yield self.restart()
        loaded = yield self.log.load()
        self.assertEqual(loaded.hard_state, HardState(3, None))
        self.assertEqual((loaded.snapshot_index, loaded.snapshot_term), (0, 0))
        self.assertEqual(loaded.entries, entries + [Entry(3, 6, b"")])

    @inlineCallbacks
    def test_truncate_replaces_conflicting_suffix(self):
        """truncate_from drops the conflicting entries and the new ones take their place."""
        yield self.log.save(append=make_entries(1, [1, 1, 1, 1]))
        replacement = make_entries(3, [2, 2])
        replacement = [Entry(e.term, e.index, b"new " + e.data) for e in replacement]
        yield self.log.save(HardState(2, "node-c"), replacement, truncate_from=3)
        loaded = yield self.log.load()
        self.assertEqual(loaded.entries, make_entries(1, [1, 1]) + replacement)
        self.assertEqual(loaded.hard_state, HardState(2, "node-c"))

    @inlineCallbacks
    def test_truncate_without_append(self):
        """Truncating alone shortens the log; the next append follows the new end."""
        yield self.log.save(append=make_entries(1, [1, 1, 1]))
        yield self.log.save(truncate_from=2)
        yield self.log.save(append=make_entries(2, [2]))
        self.assertEqual((yield self.log.load()).entries, make_entries(1, [1, 2]))

    @inlineCallbacks
    def test_non_contiguous_append_refused(self):
        """A gap, an overlap without truncation or a falling term is refused, nothing written."""
        yield self.log.save(HardState(1, "node-a"), make_entries(1, [1, 1]))
        refused = [
            dict(append=make_entries(4, [1])),
            dict(append=make_entries(2, [1])),
            dict(append=make_entries(3, [2, 1])),
            dict(append=make_entries(3, [0])),
            dict(append=make_entries(2, [1]), truncate_from=3),
        ]
        for arguments in refused:
            # The hard state and the valid entries of the same call are refused with it.
            yield self.assertFailure(self.log.save(HardState(5, "node-b"), **arguments), ValueError)
        loaded = yield self.log.load()
        self.assertEqual(loaded.entries, make_entries(1, [1, 1]))
        self.assertEqual(loaded.hard_state, HardState(1, "node-a"))

    @inlineCallbacks
    def test_hard_state_rules(self):
        """The term never goes down, and a vote once cast holds for the whole term."""
        yield self.log.save(HardState(4, None))
        yield self.log.save(HardState(4, "node-a"))
        yield self.log.save(HardState(4, "node-a"))
        yield self.assertFailure(self.log.save(HardState(3, None)), ValueError)
        yield self.assertFailure(self.log.save(HardState(4, "node-b")), ValueError)
        yield self.assertFailure(self.log.save(HardState(4, None)), ValueError)
        yield self.log.save(HardState(5, "node-b"))
        self.assertEqual((yield self.log.load()).hard_state, HardState(5, "node-b"))

    @inlineCallbacks
    def test_saves_fire_in_order(self):
        """Saves submitted together all fire, in order, the empty one included."""
        fired = []
        saves = [
            self.log.save(append=make_entries(1, [1])).addCallback(lambda _: fired.append(1)),
            self.log.save().addCallback(lambda _: fired.append(2)),
            self.log.save(append=make_entries(2, [1])).addCallback(lambda _: fired.append(3)),
        ]
        for save in saves:
            yield save
        self.assertEqual(fired, [1, 2, 3])
        self.assertEqual(len((yield self.log.load()).entries), 2)


class DamageTests(RaftLogTestMixin, TestCase):
    """
    Checksums at start-up: a torn tail is dropped, anything else stops the node.
    """

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.log.save(HardState(2, "node-a"), make_entries(1, [1, 1, 2, 2, 2]))

    @inlineCallbacks
    def test_torn_tail_dropped(self):
        """The last two records damaged: dropped with one warning, appends resume at 4."""
        yield self.restart(
            'UPDATE raft_log SET checksum = X\'00\' WHERE "index" = 4',
            'UPDATE raft_log SET data = X\'FF\' WHERE "index" = 5',
        )
        with capturedLogs() as events:
            loaded = yield self.log.load()
        self.assertEqual(loaded.entries, make_entries(1, [1, 1, 2]))
        self.assertEqual(loaded.hard_state, HardState(2, "node-a"))
        [warning] = torn_tail_warnings(events)
        self.assertEqual((warning["count"], warning["index"]), (2, 4))
        # The truncation is durable: a second restart finds nothing to drop.
        yield self.restart()
        with capturedLogs() as events:
            loaded = yield self.log.load()
        self.assertEqual(torn_tail_warnings(events), [])
        self.assertEqual(loaded.entries, make_entries(1, [1, 1, 2]))
        yield self.assertFailure(self.log.save(append=make_entries(5, [2])), ValueError)
        yield self.log.save(append=make_entries(4, [3]))
        self.assertEqual((yield self.log.load()).entries, make_entries(1, [1, 1, 2, 3]))

    @inlineCallbacks
    def test_every_record_torn(self):
        """When no record is intact the whole log is the tail, and index 1 comes next."""
        yield self.restart("UPDATE raft_log SET checksum = X'00'")
        with capturedLogs() as events:
            loaded = yield self.log.load()
        self.assertEqual(loaded.entries, [])
        [warning] = torn_tail_warnings(events)
        self.assertEqual((warning["count"], warning["index"]), (5, 1))
        yield self.log.save(append=make_entries(1, [3]))

    @inlineCallbacks
    def test_corrupt_middle_record(self):
        """A bad record with a good one after it: LogCorrupted naming it, nothing deleted."""
        yield self.restart('UPDATE raft_log SET data = X\'00\' WHERE "index" = 2')
        with capturedLogs() as events:
            failure = yield self.assertFailure(self.log.load(), LogCorrupted)
        self.assertIn("record 2 fails its checksum", str(failure))
        self.assertIsInstance(failure, StoreError)
        self.assertEqual(torn_tail_warnings(events), [])
        self.assertEqual((yield self.store.read(count_log_rows)), 5)

    @inlineCallbacks
    def test_record_moved(self):
        """A record whose index changed fails its checksum, since the index is covered."""
        yield self.restart('UPDATE raft_log SET "index" = 7 WHERE "index" = 5')
        with capturedLogs() as events:
            loaded = yield self.log.load()
        self.assertEqual(len(loaded.entries), 4)
        self.assertEqual(torn_tail_warnings(events)[0]["index"], 7)

    @inlineCallbacks
    def test_missing_record(self):
        """A gap between intact records is corruption, not a torn tail."""
        yield self.restart('DELETE FROM raft_log WHERE "index" = 3')
        failure = yield self.assertFailure(self.log.load(), LogCorrupted)
        self.assertIn("record 4 follows record 2", str(failure))

    @inlineCallbacks
    def test_corrupt_hard_state(self):
        """A damaged term or vote stops start-up."""
        for key in ("term", "vote"):
            yield self.restart(f"UPDATE raft_state SET value = X'01' WHERE key = '{key}'")
            failure = yield self.assertFailure(self.log.load(), LogCorrupted)
            self.assertIn(repr(key), str(failure))
            yield self.restart(f"DELETE FROM raft_state WHERE key = '{key}'")

    @inlineCallbacks
    def test_entries_refuse_damaged_records(self):
        """Damage found while running is not sent to a follower."""
        yield self.store.write(
            lambda connection: connection.exec_driver_sql(
                'UPDATE raft_log SET data = X\'00\' WHERE "index" = 3'
            )
        )
        failure = yield self.assertFailure(self.log.entries(1, 6), LogCorrupted)
        self.assertIn("record 3", str(failure))
        yield self.assertFailure(self.log.term_at(3), LogCorrupted)
        self.assertEqual(len((yield self.log.entries(1, 3))), 2)


class CompactionTests(RaftLogTestMixin, TestCase):
    """
    Entries folded into the snapshot are dropped; their last index and term stay.
    """

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.all_entries = make_entries(1, [1, 1, 2, 2, 2, 3, 3, 3, 4, 4])
        yield self.log.save(HardState(4, None), self.all_entries)
        yield self.log.compact(6)

    @inlineCallbacks
    def test_term_at(self):
        """term_at answers at the snapshot index and after; before it and past the end, None."""
        terms = []
        for index in (0, 5, 6, 7, 10, 11):
            terms.append((yield self.log.term_at(index)))
        self.assertEqual(terms, [None, None, 3, 3, 4, None])

    @inlineCallbacks
    def test_entries(self):
        """Ranges after the snapshot are served, clipped at the end; compacted ones refused."""
        self.assertEqual((yield self.log.entries(7, 11)), self.all_entries[6:])
        self.assertEqual((yield self.log.entries(9, 100)), self.all_entries[8:])
        self.assertEqual((yield self.log.entries(11, 20)), [])
        self.assertEqual((yield self.log.entries(8, 8)), [])
        yield self.assertFailure(self.log.entries(6, 8), LogCompacted)
        yield self.assertFailure(self.log.entries(2, 8), LogCompacted)

    @inlineCallbacks
    def test_reload(self):
        """After a restart the snapshot index and term and the later entries are loaded."""
        yield self.restart()
        loaded = yield self.log.load()
        self.assertEqual((loaded.snapshot_index, loaded.snapshot_term), (6, 3))
        self.assertEqual(loaded.entries, self.all_entries[6:])
        self.assertEqual((yield self.store.read(count_log_rows)), 4)
        yield self.log.save(append=make_entries(11, [4]))

    @inlineCallbacks
    def test_compact_to_the_end(self):
        """Compacting every entry leaves an empty log that appends follow."""
        yield self.log.compact(10)
        loaded = yield self.log.load()
        self.assertEqual((loaded.snapshot_index, loaded.snapshot_term, loaded.entries), (10, 4, []))
        yield self.assertFailure(self.log.save(append=make_entries(12, [4])), ValueError)
        yield self.assertFailure(self.log.save(append=make_entries(11, [3])), ValueError)
        yield self.log.save(append=make_entries(11, [4]))

    @inlineCallbacks
    def test_limits(self):
        """Compacting again below the snapshot does nothing; past the end, or truncating
        into the snapshot, is refused."""
        yield self.log.compact(4)
        yield self.assertFailure(self.log.compact(11), ValueError)
        yield self.assertFailure(self.log.save(truncate_from=6), ValueError)
        yield self.log.save(truncate_from=7)
        loaded = yield self.log.load()
        self.assertEqual((loaded.snapshot_index, loaded.entries), (6, []))


class InstallSnapshotTests(RaftLogTestMixin, TestCase):
    """
    A received snapshot replaces the data and the log in one transaction.
    """

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        yield self.log.save(HardState(3, "node-a"), make_entries(1, [1, 2, 3]))

    def apply(self, connection):
        """Stand-in for the replication layer: write some of the node's data."""
        connection.execute(
            insert(schema.id_sequences).values(name="from-snapshot", last_value=42)
        )

    def sequences(self):
        return self.store.read(
            lambda connection: connection.execute(select(schema.id_sequences.c.name)).all()
        )

    @inlineCallbacks
    def test_install(self):
        """The data is written, every entry dropped, the snapshot index and term set."""
        yield self.log.install_snapshot(20, 5, self.apply)
        yield self.restart()
        loaded = yield self.log.load()
        self.assertEqual(loaded, LoadedLog(HardState(3, "node-a"), 20, 5, []))
        self.assertEqual([row.name for row in (yield self.sequences())], ["from-snapshot"])
        self.assertEqual((yield self.log.term_at(20)), 5)
        yield self.log.save(append=make_entries(21, [5]))

    @inlineCallbacks
    def test_apply_raises(self):
        """An apply that fails after writing leaves the data and the log as they were."""

        def apply_and_fail(connection):
            self.apply(connection)
            raise RuntimeError("the snapshot stream broke")

        yield self.assertFailure(self.log.install_snapshot(20, 5, apply_and_fail), RuntimeError)
        loaded = yield self.log.load()
        self.assertEqual(loaded, LoadedLog(HardState(3, "node-a"), 0, 0, make_entries(1, [1, 2, 3])))
        self.assertEqual((yield self.sequences()), [])

    @inlineCallbacks
    def test_older_snapshot_refused(self):
        """A snapshot older than the installed one is refused before apply runs."""
        yield self.log.compact(2)
        calls = []
        yield self.assertFailure(self.log.install_snapshot(1, 1, calls.append), ValueError)
        self.assertEqual(calls, [])
        self.assertEqual((yield self.log.load()).entries, make_entries(3, [3]))


class CoreOnDurableLogTests(RaftLogTestMixin, TestCase):
    """
    The core's Persist actions, saved through the log before the messages
    after them go out, rebuild the same core after a restart.
    """

    @inlineCallbacks
    def test_core_survives_restart(self):
        import random

        from stalwart_tw.cluster.raft import Config, Persist, RaftCore, Send

        config = Config(frozenset({"a", "b", "c"}))
        cores = {i: RaftCore(i, config, random.Random(i), 1.0) for i in config.voters}

        def carry_out(node_id, actions, saving):
            sent = []
            for action in actions:
                if isinstance(action, Persist) and node_id == "a":
                    saving.append(self.log.save(action.hard_state, action.append,
                                                action.truncate_from))
                elif isinstance(action, Send):
                    sent.append(action.message)
            return sent

        @inlineCallbacks
        def settle(node_id, actions):
            queue = [(node_id, actions)]
            while queue:
                source, pending = queue.pop(0)
                saving = []
                messages = carry_out(source, pending, saving)
                # Durable before anything that depends on it leaves.
                for deferred in saving:
                    yield deferred
                for message in messages:
                    queue.append((message.target, cores[message.target].step(message)))

        yield settle("a", cores["a"].tick(5.0))
        self.assertEqual(cores["a"].role, "leader")
        for value in (b"one", b"two", b"three"):
            yield settle("a", cores["a"].propose(value)[1])
        before = cores["a"]
        yield self.restart()
        loaded = yield self.log.load()
        again = RaftCore("a", config, random.Random("again"), 1.0, hard_state=loaded.hard_state,
                         entries=loaded.entries)
        self.assertEqual((again.term, again.vote), (before.term, before.vote))
        self.assertEqual(again.entries, before.entries)
        self.assertEqual([e.data for e in again.entries][1:], [b"Done", b"Dtwo", b"Dthree"])
