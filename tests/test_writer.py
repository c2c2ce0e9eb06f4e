"""
The one write loop (L{stalwart_tw.writer.AccountWriter}): one batch per
write, built on a reader thread, expecting the modseq read, rebuilt once
on a conflict.
"""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.store.batch import WriteBatch
from stalwart_tw.store.changes import account_modseq, changes_since
from stalwart_tw.store.errors import BatchConflict
from stalwart_tw.writer import AccountWriter
from tests.support import open_store_and_node

ACCOUNT = 5


def log_one(connection, batch, object_id, seen):
    # A builder: records the modseq it read, then logs one change.
    seen.append(account_modseq(connection, ACCOUNT))
    batch.log_change(ACCOUNT, "Thing", object_id, "created")
    return object_id


class AccountWriterTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.store, self.node = yield open_store_and_node(self)
        self.writer = AccountWriter(self.store, self.node)

    def rival_commits(self, times):
        # Another node's batch lands between each build and its commit.
        real_commit = self.node.commit
        remaining = [times]

        @defer.inlineCallbacks
        def commit(batch):
            if remaining[0]:
                remaining[0] -= 1
                yield real_commit(WriteBatch().log_change(ACCOUNT, "Thing", "rival", "updated"))
            result = yield real_commit(batch)
            return result

        self.node.commit = commit

    @defer.inlineCallbacks
    def test_one_batch_expecting_the_modseq_read(self):
        """A write is one batch, built against the modseq it read; the outcome comes back."""
        seen = []
        before = self.node.applied_index
        written = yield self.writer.write(ACCOUNT, log_one, "a", seen)
        self.assertEqual((written.outcome, seen), ("a", [0]))
        self.assertEqual(self.node.applied_index, before + 1)
        self.assertEqual(written.type_modseq(ACCOUNT, "Thing", None), 1)
        self.assertEqual(written.type_modseq(ACCOUNT, "Other", 7), 7)

    @defer.inlineCallbacks
    def test_rebuilt_once_on_a_conflict(self):
        """A batch built on state that moved before its commit is built again from fresh state."""
        self.rival_commits(1)
        seen = []
        written = yield self.writer.write(ACCOUNT, log_one, "a", seen)
        self.assertEqual(seen, [0, 1])
        found = yield self.store.read(changes_since, ACCOUNT, "Thing", 0, 10)
        self.assertEqual((found.created, found.updated), (["a"], ["rival"]))
        self.assertEqual(written.result.modseqs, {ACCOUNT: 2})

    @defer.inlineCallbacks
    def test_second_conflict_fails(self):
        """A rebuild that conflicts again fails with BatchConflict, nothing of it applied."""
        self.rival_commits(2)
        seen = []
        yield self.assertFailure(self.writer.write(ACCOUNT, log_one, "a", seen), BatchConflict)
        self.assertEqual(len(seen), 2)
        found = yield self.store.read(changes_since, ACCOUNT, "Thing", 0, 10)
        self.assertEqual(found.created, [])

    @defer.inlineCallbacks
    def test_nothing_built_nothing_committed(self):
        """A builder that leaves the batch empty commits nothing."""
        before = self.node.applied_index
        written = yield self.writer.write(ACCOUNT, lambda connection, batch: "nothing")
        self.assertEqual((written.outcome, written.result), ("nothing", None))
        self.assertEqual(self.node.applied_index, before)

    @defer.inlineCallbacks
    def test_refusal_commits_nothing(self):
        """A builder that raises fails the write with its error, and nothing is committed."""
        def refuse(connection, batch):
            batch.log_change(ACCOUNT, "Thing", "x", "created")
            raise LookupError("no such thing")

        before = self.node.applied_index
        yield self.assertFailure(self.writer.write(ACCOUNT, refuse), LookupError)
        self.assertEqual(self.node.applied_index, before)

    @defer.inlineCallbacks
    def test_unread_account_refused(self):
        """A builder that logs a change in an account it did not read is refused."""
        def elsewhere(connection, batch):
            batch.log_change(ACCOUNT + 1, "Thing", "x", "created")

        before = self.node.applied_index
        error = yield self.assertFailure(self.writer.write(ACCOUNT, elsewhere), ValueError)
        self.assertIn(str(ACCOUNT + 1), str(error))
        self.assertEqual(self.node.applied_index, before)

    @defer.inlineCallbacks
    def test_writes_to_one_account_in_turn(self):
        """Two writes to one account never build on the same state."""
        seen = []
        yield defer.gatherResults([
            self.writer.write(ACCOUNT, log_one, name, seen) for name in ("a", "b", "c")
        ])
        self.assertEqual(seen, [0, 1, 2])
