"""
Tests for the store's engine, WriteBatch, the change log and the local node.
"""

import threading

from sqlalchemy import func, select
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.cluster.node import LocalNode
from stalwart_tw.store import batch as batch_module
from stalwart_tw.store import changes, schema
from stalwart_tw.store.batch import WriteBatch, apply_batch
from stalwart_tw.store.engine import Store
from stalwart_tw.store.errors import BatchConflict, InvalidBatch, NodeStopping
from tests.support import open_store_and_node


def principal_row(principal_id, name):
    return dict(id=principal_id, kind="individual", name=name, quota=0, created_at=1)


def count_rows(connection, table):
    return connection.execute(select(func.count()).select_from(table)).scalar()


class StoreTestMixin:
    """
    A real store on a fresh folder, with a local node on it.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.store, self.node = yield open_store_and_node(self, reader_threads=2)

    def read_all(self, table):
        def read(connection):
            return [dict(row._mapping) for row in connection.execute(select(table))]

        return self.store.read(read)


class WriteBatchEncodingTests(TestCase):
    """
    A batch survives the trip through bytes, and bad batches are refused.
    """

    def sample(self):
        batch = WriteBatch()
        batch.insert("principals", **principal_row(7, "alice"))
        batch.update("principals", {"id": 7}, description="Alice \u00e9")
        batch.delete("principal_emails", address="old@example.org")
        batch.log_change(7, "Email", "m1", "created")
        batch.reference_blob("ab" * 32, 10)
        batch.expect_modseq(7, 3)
        return batch

    def test_round_trip(self):
        """A batch decoded from its bytes equals the batch encoded."""
        batch = self.sample()
        decoded = WriteBatch.from_bytes(batch.to_bytes())
        self.assertEqual(decoded, batch)
        self.assertEqual(decoded.operations, batch.operations)
        self.assertEqual(decoded.expected_modseqs, {7: 3})

    def test_garbage_bytes(self):
        """Bytes that are not msgpack are refused with InvalidBatch."""
        self.assertRaises(InvalidBatch, WriteBatch.from_bytes, b"\xc1\xc1\xc1")

    def test_wrong_version(self):
        """A batch of an unknown format version is refused."""
        import msgpack

        data = msgpack.packb({"v": 99, "ops": [], "changes": [], "blobs": [], "expect": []})
        self.assertRaises(InvalidBatch, WriteBatch.from_bytes, data)

    def test_truncated_bytes(self):
        """A batch cut short is refused whole."""
        data = self.sample().to_bytes()
        self.assertRaises(InvalidBatch, WriteBatch.from_bytes, data[: len(data) // 2])

    def test_decoded_unknown_table(self):
        """Decoding checks table names, so a corrupt entry cannot write elsewhere."""
        import msgpack

        data = msgpack.packb(
            {"v": 1, "ops": [["i", "sqlite_master", {"x": 1}]], "changes": [], "blobs": [],
             "expect": []}
        )
        self.assertRaises(InvalidBatch, WriteBatch.from_bytes, data)

    def test_unknown_table(self):
        """An insert into a table the schema does not declare is refused."""
        self.assertRaises(InvalidBatch, WriteBatch().insert, "nope", id=1)

    def test_reserved_table(self):
        """A batch cannot write the applied index or modseqs directly."""
        self.assertRaises(InvalidBatch, WriteBatch().insert, "node_state", key="x", value=1)
        self.assertRaises(InvalidBatch, WriteBatch().insert, "raft_state", key="term", value=b"")
        self.assertRaises(InvalidBatch, WriteBatch().delete, "raft_log", index=1)
        self.assertRaises(InvalidBatch, WriteBatch().update, "account_state", {"account_id": 1},
                          modseq=9)

    def test_unknown_column(self):
        """A column the table lacks is refused."""
        self.assertRaises(InvalidBatch, WriteBatch().insert, "principals", colour="red")

    def test_unsupported_value(self):
        """Values msgpack cannot carry exactly (a set, a dict) are refused."""
        self.assertRaises(InvalidBatch, WriteBatch().insert, "principals", name={"a"})

    def test_integer_overflow(self):
        """Integers beyond 64 bits are refused when built and when decoded."""
        import msgpack

        self.assertRaises(InvalidBatch, WriteBatch().insert, "principals", quota=2**63)
        data = msgpack.packb(
            {"v": 1, "ops": [], "changes": [[2**64 - 1, "Email", "x", "c"]], "blobs": [],
             "expect": []}
        )
        self.assertRaises(InvalidBatch, WriteBatch.from_bytes, data)

    def test_string_longer_than_column(self):
        """A string longer than its column allows is refused before any database sees it."""
        self.assertRaises(InvalidBatch, WriteBatch().insert, "principals", kind="x" * 17)

    def test_object_id_types(self):
        """Object ids are strings or integers; None or a mapping is refused."""
        self.assertEqual(WriteBatch().log_change(1, "Email", 42, "created").changes[0][2], "42")
        for bad in (None, {"a": 1}, "", "x" * 256, True):
            self.assertRaises(InvalidBatch, WriteBatch().log_change, 1, "Email", bad, "created")

    def test_bad_change_kind(self):
        """A change kind other than created/updated/destroyed is refused."""
        self.assertRaises(InvalidBatch, WriteBatch().log_change, 1, "Email", "x", "moved")


class ApplyTests(StoreTestMixin, TestCase):
    """
    Applying batches: rows, modseqs, the change log and the applied index
    move together or not at all.
    """

    @defer.inlineCallbacks
    def test_apply_writes_rows_and_index(self):
        """A committed batch's rows are visible and the applied index moved."""
        batch = WriteBatch().insert("principals", **principal_row(1, "alice"))
        batch.log_change(1, "Principal", "1", "created")
        result = yield self.node.commit(batch)
        self.assertEqual(result.index, 1)
        self.assertEqual(result.modseqs, {1: 1})
        self.assertEqual(result.type_states, {1: {"Principal": 1}})
        rows = yield self.read_all(schema.principals)
        self.assertEqual([row["name"] for row in rows], ["alice"])
        self.assertEqual((yield self.store.applied_index()), 1)

    @defer.inlineCallbacks
    def test_modseq_advances_once_per_batch(self):
        """A batch touching many objects of an account advances its modseq by one."""
        batch = WriteBatch()
        for number in range(5):
            batch.log_change(4, "Email", f"e{number}", "created")
        batch.log_change(4, "Mailbox", "inbox", "updated")
        yield self.node.commit(batch)
        modseq = yield self.store.read(changes.account_modseq, 4)
        self.assertEqual(modseq, 1)
        email_state = yield self.store.read(changes.type_modseq, 4, "Email")
        other_state = yield self.store.read(changes.type_modseq, 4, "Thread")
        self.assertEqual((email_state, other_state), (1, 0))

    @defer.inlineCallbacks
    def test_failure_mid_apply_leaves_nothing(self):
        """A failure after the rows were written rolls back rows, change log and index."""
        yield self.node.commit(WriteBatch().log_change(1, "Email", "first", "created"))

        def explode(connection, blob_references):
            raise OSError("disk on fire")

        self.patch(batch_module, "_apply_blob_references", explode)
        batch = WriteBatch().insert("principals", **principal_row(2, "bob"))
        batch.log_change(1, "Email", "second", "created")
        yield self.assertFailure(self.node.commit(batch), OSError)
        self.assertEqual((yield self.read_all(schema.principals)), [])
        self.assertEqual((yield self.store.read(changes.account_modseq, 1)), 1)
        log = yield self.read_all(schema.changelog)
        self.assertEqual([row["object_id"] for row in log], ["first"])
        self.assertEqual((yield self.store.applied_index()), 1)

    @defer.inlineCallbacks
    def test_constraint_violation_mid_batch(self):
        """A batch whose second insert breaks a unique constraint leaves no trace of the first."""
        yield self.node.commit(WriteBatch().insert("principals", **principal_row(1, "alice")))
        batch = WriteBatch()
        batch.insert("principals", **principal_row(2, "bob"))
        batch.insert("principals", **principal_row(3, "alice"))
        batch.log_change(1, "Principal", "2", "created")
        failure = yield self.assertFailure(self.node.commit(batch), InvalidBatch)
        self.assertIn("UNIQUE", str(failure))
        names = [row["name"] for row in (yield self.read_all(schema.principals))]
        self.assertEqual(names, ["alice"])
        self.assertEqual((yield self.store.read(changes.account_modseq, 1)), 0)
        # Refusal is deterministic, so the entry is consumed like a conflict:
        # every node that replays it moves past it the same way.
        self.assertEqual((yield self.store.applied_index()), 2)

    @defer.inlineCallbacks
    def test_listener_failure_keeps_the_commit(self):
        """A listener that raises does not turn a durable write into a failure."""
        heard = []

        def broken(result):
            raise ValueError("listener bug")

        self.node.add_listener(broken)
        self.node.add_listener(heard.append)
        result = yield self.node.commit(WriteBatch().log_change(2, "Email", "e", "created"))
        self.assertTrue(result.applied)
        self.assertEqual(len(heard), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @defer.inlineCallbacks
    def test_next_batch_after_failure(self):
        """After a failed batch the node goes on committing."""
        batch = WriteBatch().release_blob("cd" * 32)
        yield self.assertFailure(self.node.commit(batch), InvalidBatch)
        result = yield self.node.commit(WriteBatch().log_change(1, "Email", "x", "created"))
        self.assertTrue(result.applied)
        self.assertEqual((yield self.store.applied_index()), result.index)

    @defer.inlineCallbacks
    def test_stale_batch_is_skipped(self):
        """A batch built on an older modseq applies nothing and reports the conflict."""
        yield self.node.commit(WriteBatch().log_change(9, "Email", "a", "created"))
        stale = WriteBatch().insert("principals", **principal_row(5, "eve"))
        stale.log_change(9, "Email", "b", "created")
        stale.expect_modseq(9, 0)
        failure = yield self.assertFailure(self.node.commit(stale), BatchConflict)
        self.assertEqual(failure.accounts, (9,))
        self.assertEqual((yield self.read_all(schema.principals)), [])
        self.assertEqual((yield self.store.read(changes.account_modseq, 9)), 1)
        # Skipping is itself deterministic: the index moved past the batch.
        self.assertEqual((yield self.store.applied_index()), 2)

    @defer.inlineCallbacks
    def test_fresh_batch_applies(self):
        """A batch that expects the current modseq applies."""
        yield self.node.commit(WriteBatch().log_change(9, "Email", "a", "created"))
        batch = WriteBatch().log_change(9, "Email", "b", "created").expect_modseq(9, 1)
        result = yield self.node.commit(batch)
        self.assertEqual(result.modseqs, {9: 2})

    @defer.inlineCallbacks
    def test_replayed_index_is_ignored(self):
        """Applying an index at or below the applied index changes nothing."""
        batch = WriteBatch().insert("principals", **principal_row(1, "alice"))
        first = yield self.store.write(apply_batch, batch, 5)
        again = yield self.store.write(apply_batch, batch, 5)
        self.assertTrue(first.applied)
        self.assertTrue(again.duplicate)
        self.assertEqual(len((yield self.read_all(schema.principals))), 1)

    @defer.inlineCallbacks
    def test_blob_references(self):
        """Blob refcounts add up across batches; the row goes when the count reaches zero."""
        blob = "ef" * 32
        yield self.node.commit(WriteBatch().reference_blob(blob, 100, count=2))
        yield self.node.commit(WriteBatch().release_blob(blob))
        rows = yield self.read_all(schema.blobs)
        self.assertEqual(rows, [{"blob_hash": blob, "size": 100, "refcount": 1}])
        yield self.node.commit(WriteBatch().release_blob(blob))
        self.assertEqual((yield self.read_all(schema.blobs)), [])

    @defer.inlineCallbacks
    def test_over_release_refused(self):
        """Releasing more references than a blob has fails and changes nothing."""
        blob = "ef" * 32
        yield self.node.commit(WriteBatch().reference_blob(blob, 100))
        yield self.assertFailure(
            self.node.commit(WriteBatch().release_blob(blob, count=2)), InvalidBatch
        )
        self.assertEqual((yield self.read_all(schema.blobs))[0]["refcount"], 1)

    @defer.inlineCallbacks
    def test_listeners_hear_applied_batches(self):
        """The node tells its listeners which types changed in which accounts."""
        heard = []
        self.node.add_listener(heard.append)
        yield self.node.commit(WriteBatch().log_change(3, "Mailbox", "m", "created"))
        self.assertEqual([result.type_states for result in heard], [{3: {"Mailbox": 1}}])


class DurabilityTests(TestCase):
    """
    Closing the store finishes what was submitted; reopening finds it.
    """

    @defer.inlineCallbacks
    def test_close_waits_for_submitted_writes(self):
        """Writes submitted just before close are all on disk after it."""
        path = self.mktemp()
        store = Store(path)
        yield store.open()
        node = LocalNode(store)
        yield node.startService()
        commits = [
            node.commit(WriteBatch().insert("principals", **principal_row(n, f"user{n}")))
            for n in range(1, 51)
        ]
        yield node.stopService()
        yield store.close()
        self.assertTrue(all(commit.called for commit in commits))
        reopened = Store(path)
        yield reopened.open()
        self.addCleanup(reopened.close)
        count = yield reopened.read(count_rows, schema.principals)
        self.assertEqual(count, 50)
        self.assertEqual((yield reopened.applied_index()), 50)

    @defer.inlineCallbacks
    def test_node_resumes_index(self):
        """A node restarted on the same data continues from its applied index."""
        path = self.mktemp()
        for expected in (1, 2):
            store = Store(path)
            yield store.open()
            node = LocalNode(store)
            yield node.startService()
            result = yield node.commit(WriteBatch().log_change(1, "Email", "x", "updated"))
            self.assertEqual(result.index, expected)
            yield node.stopService()
            yield store.close()

    def test_closed_store_refuses_work(self):
        """Using a store that is not open is an error, not a hang."""
        store = Store(self.mktemp())
        self.assertRaises(RuntimeError, store.read, count_rows, schema.principals)
        self.assertRaises(RuntimeError, store.write, count_rows, schema.principals)


class ChangeLogTests(StoreTestMixin, TestCase):
    """
    The change log answers what changed since a state.
    """

    def commit_changes(self, *changes_):
        batch = WriteBatch()
        for object_id, kind in changes_:
            batch.log_change(1, "Email", object_id, kind)
        return self.node.commit(batch)

    def since(self, modseq, max_changes=100):
        return self.store.read(changes.changes_since, 1, "Email", modseq, max_changes)

    @defer.inlineCallbacks
    def test_collapses_per_object(self):
        """Each object is listed once, by what it became since the state."""
        yield self.commit_changes(("a", "created"), ("b", "created"), ("c", "created"))
        yield self.commit_changes(("a", "updated"), ("b", "destroyed"), ("d", "created"))
        yield self.commit_changes(("d", "destroyed"), ("e", "created"))
        result = yield self.since(1)
        self.assertEqual(result.created, ["e"])
        self.assertEqual(result.updated, ["a"])
        self.assertEqual(result.destroyed, ["b"])
        self.assertEqual((result.new_modseq, result.has_more), (3, False))
        everything = yield self.since(0)
        self.assertEqual(sorted(everything.created), ["a", "c", "e"])

    @defer.inlineCallbacks
    def test_max_changes_stops_at_a_modseq_boundary(self):
        """A limit inside a batch stops before that batch, with has_more."""
        yield self.commit_changes(("a", "created"), ("b", "created"))
        yield self.commit_changes(("c", "created"), ("d", "created"))
        result = yield self.since(0, max_changes=3)
        self.assertEqual((result.created, result.new_modseq, result.has_more), (["a", "b"], 1, True))
        rest = yield self.since(result.new_modseq, max_changes=3)
        self.assertEqual((rest.created, rest.new_modseq, rest.has_more), (["c", "d"], 2, False))

    @defer.inlineCallbacks
    def test_one_batch_over_the_limit(self):
        """When the first batch alone exceeds the limit, the page ends inside it."""
        yield self.commit_changes(("a", "created"), ("b", "created"), ("c", "created"))
        yield self.commit_changes(("a", "updated"), ("d", "created"))
        first = yield self.since(0, max_changes=2)
        self.assertEqual((first.created, first.has_more), (["a", "b"], True))
        point = (first.new_modseq, first.new_skip)
        self.assertEqual(point, (0, 2))
        self.assertEqual(changes.encode_state(*point), "0.2")
        rest = yield self.since(changes.decode_point("0.2"), max_changes=2)
        self.assertEqual((rest.created, rest.new_modseq, rest.has_more), (["c"], 1, True))
        last = yield self.since(rest.new_modseq, max_changes=2)
        self.assertEqual((last.created, last.updated, last.has_more), (["d"], ["a"], False))

    @defer.inlineCallbacks
    def test_points_never_issued(self):
        """An intermediate state past the objects of its modseq is refused."""
        yield self.commit_changes(("a", "created"), ("b", "created"))
        yield self.commit_changes(("c", "created"))
        for point in (changes.ChangePoint(0, 2), changes.ChangePoint(1, 5)):
            yield self.assertFailure(self.since(point), changes.ChangesUnavailable)
        for text in ("0.0", "1.", ".1", "1.x", "1.2.3"):
            self.assertRaises(changes.InvalidState, changes.decode_point, text)

    @defer.inlineCallbacks
    def test_future_state(self):
        """A state the server never reached cannot be answered."""
        yield self.commit_changes(("a", "created"))
        yield self.assertFailure(self.since(7), changes.ChangesUnavailable)

    @defer.inlineCallbacks
    def test_other_types_leave_state_alone(self):
        """Changes to another type do not show up, and the state stays put."""
        yield self.commit_changes(("a", "created"))
        yield self.node.commit(WriteBatch().log_change(1, "Mailbox", "m", "created"))
        result = yield self.since(1)
        self.assertEqual((result.created, result.new_modseq), ([], 1))

    def test_state_strings(self):
        """State strings round-trip, and foreign strings are refused."""
        for modseq in (0, 1, 255, 2**40):
            self.assertEqual(changes.decode_state(changes.encode_state(modseq)), modseq)
        for bad in ("", "xyz", "0ff", "-1", "A", 12, None, "f" * 17):
            self.assertRaises(changes.InvalidState, changes.decode_state, bad)


class SerialisedTests(StoreTestMixin, TestCase):
    """
    Writes to one account run one after another.
    """

    def test_same_key_waits(self):
        """A second task for the same key starts only when the first is done."""
        first, order = defer.Deferred(), []

        def task_one():
            order.append("one starts")
            return first

        self.node.serialised(1, task_one)
        done = self.node.serialised(1, lambda: order.append("two"))
        other = self.node.serialised(2, lambda: order.append("other key"))
        self.assertEqual(order, ["one starts", "other key"])
        first.callback(None)
        self.assertEqual(order, ["one starts", "other key", "two"])
        self.assertTrue(done.called and other.called)


class NodeStopTests(TestCase):
    """
    Stopping the node finishes accepted writes and refuses new ones.
    """

    @defer.inlineCallbacks
    def test_waiting_operations_finish_before_stop(self):
        """Operations queued behind a lock still commit when stop is called."""
        store = Store(self.mktemp())
        yield store.open()
        self.addCleanup(store.close)
        node = LocalNode(store)
        yield node.startService()
        gate = defer.Deferred()

        def commit_after(waiting_for, number):
            def operation():
                batch = WriteBatch().insert("principals", **principal_row(number, f"u{number}"))
                return waiting_for.addCallback(lambda _: node.commit(batch))

            return node.serialised(1, operation)

        first = commit_after(gate, 1)
        second = commit_after(defer.succeed(None), 2)
        stopped = node.stopService()
        self.assertFalse(stopped.called)
        refused = node.serialised(1, lambda: None)
        self.failureResultOf(refused).trap(NodeStopping)
        gate.callback(None)
        yield stopped
        self.assertTrue(first.called and second.called)
        self.assertEqual((yield store.read(count_rows, schema.principals)), 2)


class GroupCommitTests(StoreTestMixin, TestCase):
    """
    Writes queued together commit together, and each stays all-or-nothing.
    """

    @defer.inlineCallbacks
    def test_failure_inside_a_group_is_isolated(self):
        """One failing batch in a group rolls back alone; the others commit."""
        groups = []
        original = Store._run_group

        def recording(store, group):
            groups.append(len(group))
            return original(store, group)

        self.patch(Store, "_run_group", recording)
        release = threading.Event()
        # Hold the writer thread so that the next writes queue up together.
        holding = self.store.write(lambda connection: release.wait(30))
        commits = []
        for number in range(1, 6):
            batch = WriteBatch().insert("principals", **principal_row(number, f"user{number}"))
            if number == 3:
                batch.release_blob("ab" * 32)
            batch.log_change(1, "Principal", str(number), "created")
            commits.append(self.node.commit(batch))
        release.set()
        yield holding
        outcomes = yield defer.DeferredList(commits, consumeErrors=True)
        self.assertEqual([ok for ok, _ in outcomes], [True, True, False, True, True])
        outcomes[2][1].trap(InvalidBatch)
        # The five batches went in one group (with the holding write or after it).
        self.assertGreaterEqual(max(groups), 5)
        names = sorted(row["name"] for row in (yield self.read_all(schema.principals)))
        self.assertEqual(names, ["user1", "user2", "user4", "user5"])
        self.assertEqual((yield self.store.read(changes.account_modseq, 1)), 4)
        self.assertEqual((yield self.store.applied_index()), 5)


class WriterRobustnessTests(StoreTestMixin, TestCase):
    """
    The writer thread answers every write, even when its connection fails.
    """

    @defer.inlineCallbacks
    def test_connection_failure_fails_the_group_then_recovers(self):
        """A writer connection that cannot open fails its writes; later writes succeed."""
        original = Store._writer
        calls = []

        def failing_once(store):
            calls.append(1)
            if len(calls) == 1:
                raise OSError("cannot open the database")
            return original(store)

        self.store._discard_writer()
        self.patch(Store, "_writer", failing_once)
        first = self.node.commit(WriteBatch().insert("principals", **principal_row(1, "a")))
        yield self.assertFailure(first, OSError)
        # The node's log says the group failed to commit.
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        result = yield self.node.commit(WriteBatch().insert("principals", **principal_row(2, "b")))
        self.assertTrue(result.applied)
        self.assertEqual([row["name"] for row in (yield self.read_all(schema.principals))], ["b"])


class ReaderPoolTests(TestCase):
    """
    Every reader thread has a connection of its own.
    """

    @defer.inlineCallbacks
    def test_all_readers_run_at_once(self):
        """As many reads as reader threads run together, none waiting for a connection."""
        readers = 20
        store = Store(self.mktemp(), reader_threads=readers)
        yield store.open()
        self.addCleanup(store.close)
        together = threading.Barrier(readers, timeout=20)

        def meet(connection):
            count_rows(connection, schema.principals)
            return together.wait()

        arrivals = yield defer.gatherResults([store.read(meet) for _ in range(readers)])
        self.assertEqual(sorted(arrivals), list(range(readers)))


class CancelledCommitTests(StoreTestMixin, TestCase):
    """
    A caller that stops waiting does not stop the commit or its news.
    """

    @defer.inlineCallbacks
    def test_listeners_hear_a_commit_whose_caller_left(self):
        """Cancelling the wait fails it for the caller; the batch applies and listeners hear."""
        heard = defer.Deferred()
        self.node.add_listener(lambda result: heard.callback(result) if not heard.called else None)
        waiting = self.node.commit(WriteBatch().log_change(5, "Email", "x", "created"))
        waiting.cancel()
        self.failureResultOf(waiting, defer.CancelledError)
        result = yield heard
        self.assertEqual(result.type_states, {5: {"Email": 1}})
        self.assertEqual((yield self.store.read(changes.account_modseq, 5)), 1)
