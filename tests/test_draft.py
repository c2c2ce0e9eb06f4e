"""
Tests for Draft (the data as a batch will leave it) and for the WriteBatch
savepoints and per-table index it relies on.
"""

import contextlib

from sqlalchemy import select
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.store import schema
from stalwart_tw.store.batch import WriteBatch
from stalwart_tw.store.draft import Draft
from tests.support import open_store_and_node

BLOB_A, BLOB_B = "aa" * 32, "bb" * 32


def principal_row(principal_id, name, **extra):
    return dict(id=principal_id, kind="individual", name=name, created_at=1, **extra)


def names(rows):
    return [row["name"] for row in rows]


class Boom(Exception):
    """Raised inside a savepoint to roll it back."""


class CountingConnection:
    """A connection that counts the statements executed through it."""

    def __init__(self, connection):
        self._connection = connection
        self.statements = 0
        self.dialect = connection.dialect

    def execute(self, *args, **kwargs):
        self.statements += 1
        return self._connection.execute(*args, **kwargs)

    @property
    def connection(self):
        # The driver's connection, for statements run on its cursor.
        return _CountingDriver(self, self._connection.connection)


class _CountingDriver:
    def __init__(self, counter, driver):
        self._counter = counter
        self._driver = driver

    def cursor(self):
        return _CountingCursor(self._counter, self._driver.cursor())


class _CountingCursor:
    def __init__(self, counter, cursor):
        self._counter = counter
        self._cursor = cursor

    def execute(self, *args):
        self._counter.statements += 1
        return self._cursor.execute(*args)

    def __getattr__(self, name):
        return getattr(self._cursor, name)


class DraftTests(TestCase):
    """
    A Draft reads stored rows with the batch's pending operations laid over
    them; a batch savepoint undoes exactly what its block added.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.store, self.node = yield open_store_and_node(self, reader_threads=2)
        stored = WriteBatch()
        stored.insert("principals", **principal_row(1, "alice", description="Alice"))
        stored.insert("principals", **principal_row(2, "bob", quota=10))
        stored.insert("principals", **principal_row(4, "anna"))
        stored.insert("principal_emails", address="alice@example.org", principal_id=1,
                      is_alias=False)
        stored.insert("principal_emails", address="al@example.org", principal_id=1,
                      is_alias=True)
        stored.insert("principal_emails", address="bob@example.org", principal_id=2,
                      is_alias=False)
        stored.insert("principal_members", group_id=4, member_id=1)
        stored.insert("id_sequences", name="Principal", last_value=4)
        yield self.node.commit(stored)

    def in_draft(self, build):
        """Run C{build(draft)} on a reader thread over a fresh batch."""

        def read(connection):
            return build(Draft(connection, WriteBatch()))

        return self.store.read(read)

    def read_table(self, table):
        def read(connection):
            statement = select(table).order_by(*table.primary_key)
            return [dict(row._mapping) for row in connection.execute(statement)]

        return self.store.read(read)

    @defer.inlineCallbacks
    def test_stored_rows_fast_path(self):
        """With no pending operations on a table, rows is one plain SELECT in key order."""

        def read(connection):
            counting = CountingConnection(connection)
            draft = Draft(counting, WriteBatch().insert("id_sequences", name="x", last_value=1))
            return draft.rows("principals"), counting.statements

        rows, statements = yield self.store.read(read)
        self.assertEqual(names(rows), ["alice", "bob", "anna"])
        self.assertEqual(statements, 1)
        self.assertEqual(
            rows[0],
            dict(id=1, kind="individual", name="alice", description="Alice", secret=None,
                 quota=0, timezone=None, created_at=1),
        )

    @defer.inlineCallbacks
    def test_pending_insert_visible(self):
        """A row the batch inserts is found by name, among the stored rows, in key order."""

        def build(draft):
            draft.batch.insert("principals", **principal_row(3, "carol"))
            return draft.first("principals", name="carol"), draft.rows("principals")

        carol, everyone = yield self.in_draft(build)
        self.assertEqual(carol["id"], 3)
        self.assertEqual(names(everyone), ["alice", "bob", "carol", "anna"])

    @defer.inlineCallbacks
    def test_insert_defaults(self):
        """A pending insert gets each omitted column's scalar default, or None."""

        def build(draft):
            draft.batch.insert("principals", id=9, kind="group", name="staff", created_at=5)
            return draft.first("principals", id=9)

        row = yield self.in_draft(build)
        self.assertEqual(
            row,
            dict(id=9, kind="group", name="staff", description=None, secret=None, quota=0,
                 timezone=None, created_at=5),
        )

    @defer.inlineCallbacks
    def test_pending_delete(self):
        """A pending delete hides a stored row and a row inserted earlier in the batch."""

        def build(draft):
            draft.batch.insert("principals", **principal_row(3, "carol"))
            draft.batch.delete("principals", name="bob")
            draft.batch.delete("principals", id=3)
            return (
                draft.first("principals", name="bob"),
                draft.first("principals", id=3),
                names(draft.rows("principals")),
            )

        bob, carol, everyone = yield self.in_draft(build)
        self.assertIsNone(bob)
        self.assertIsNone(carol)
        self.assertEqual(everyone, ["alice", "anna"])

    @defer.inlineCallbacks
    def test_pending_update(self):
        """A pending update changes the values of stored and pending rows alike."""

        def build(draft):
            draft.batch.insert("principals", **principal_row(3, "carol"))
            draft.batch.update("principals", {"id": 2}, quota=99, description="Bob")
            draft.batch.update("principals", {"kind": "individual"}, timezone="UTC")
            return draft.rows("principals")

        rows = yield self.in_draft(build)
        bob = next(row for row in rows if row["id"] == 2)
        self.assertEqual((bob["quota"], bob["description"]), (99, "Bob"))
        self.assertEqual([row["timezone"] for row in rows], ["UTC"] * 4)

    @defer.inlineCallbacks
    def test_renamed_row(self):
        """A stored row renamed by a pending update is found under its new name, not its old."""

        def build(draft):
            draft.batch.update("principals", {"id": 2}, name="robert")
            return (
                draft.first("principals", name="robert"),
                draft.first("principals", name="bob"),
                draft.select(
                    "principals",
                    schema.principals.c.name.like("r%"),
                    lambda row: row["name"].startswith("r"),
                ),
            )

        robert, bob, starting_with_r = yield self.in_draft(build)
        self.assertEqual(robert["id"], 2)
        self.assertEqual(robert["quota"], 10)
        self.assertIsNone(bob)
        self.assertEqual(names(starting_with_r), ["robert"])

    @defer.inlineCallbacks
    def test_renamed_twice(self):
        """A row renamed twice, found by its first new name, ends under the last."""

        def build(draft):
            draft.batch.update("principals", {"name": "bob"}, name="rob")
            draft.batch.update("principals", {"name": "rob"}, name="robert")
            return names(draft.rows("principals"))

        self.assertEqual((yield self.in_draft(build)), ["alice", "robert", "anna"])

    @defer.inlineCallbacks
    def test_primary_key_moves(self):
        """An update of a primary key moves the row: found under the new key, gone from the old."""

        def build(draft):
            draft.batch.update("principal_emails", {"address": "bob@example.org"},
                               address="robert@example.org")
            return (
                draft.first("principal_emails", address="bob@example.org"),
                draft.first("principal_emails", address="robert@example.org"),
            )

        old, new = yield self.in_draft(build)
        self.assertIsNone(old)
        self.assertEqual(new, dict(address="robert@example.org", principal_id=2, is_alias=False))

    @defer.inlineCallbacks
    def test_select(self):
        """select finds stored rows by condition, pending or changed ones by predicate."""
        p = schema.principals

        def build(draft):
            draft.batch.insert("principals", **principal_row(3, "adam"))
            draft.batch.insert("principals", **principal_row(5, "zoe"))
            draft.batch.update("principals", {"id": 2}, name="abe")
            draft.batch.delete("principals", id=4)
            return draft.select(
                "principals", p.c.name.like("a%"), lambda row: row["name"].startswith("a")
            )

        rows = yield self.in_draft(build)
        self.assertEqual([(row["id"], row["name"]) for row in rows],
                         [(1, "alice"), (2, "abe"), (3, "adam")])

    @defer.inlineCallbacks
    def test_booleans(self):
        """Stored booleans and pending 0/1 compare alike, and read back as bools."""

        def build(draft):
            draft.batch.insert("principal_emails", address="b@example.org", principal_id=2,
                               is_alias=1)
            return (
                draft.rows("principal_emails", is_alias=True),
                draft.rows("principal_emails", is_alias=0),
            )

        aliases, primaries = yield self.in_draft(build)
        self.assertEqual([row["address"] for row in aliases], ["al@example.org", "b@example.org"])
        self.assertIs(aliases[1]["is_alias"], True)
        self.assertEqual([row["address"] for row in primaries],
                         ["alice@example.org", "bob@example.org"])

    @defer.inlineCallbacks
    def test_address_claimed(self):
        """An address claimed by one object of the batch is taken for the next."""

        def build(draft):
            claimed = []
            for principal_id, address in [(7, "new@example.org"), (8, "new@example.org")]:
                if draft.first("principal_emails", address=address) is None:
                    draft.batch.insert("principal_emails", address=address,
                                       principal_id=principal_id, is_alias=False)
                    claimed.append(principal_id)
            return claimed

        self.assertEqual((yield self.in_draft(build)), [7])

    def test_savepoint_rollback_restores_exactly(self):
        """A raising savepoint leaves operations, changes, blobs and modseqs as they were."""
        batch = WriteBatch()
        batch.insert("principals", **principal_row(3, "carol"))
        batch.log_change(0, "Principal", 3, "created")
        batch.reference_blob(BLOB_A, 10)
        batch.expect_modseq(0, 5)
        before = WriteBatch.from_bytes(batch.to_bytes())
        blob_entry = batch.blob_references[BLOB_A]
        with self.assertRaises(Boom):
            with batch.savepoint():
                batch.insert("principals", **principal_row(6, "dave"))
                batch.update("principals", {"id": 3}, name="caroline")
                batch.delete("principal_emails", principal_id=3)
                batch.log_change(0, "Principal", 6, "created")
                batch.reference_blob(BLOB_A, 10, count=2)
                batch.release_blob(BLOB_A)
                batch.reference_blob(BLOB_B, 20)
                batch.expect_modseq(0, 6)
                batch.expect_modseq(7, 1)
                raise Boom()
        self.assertEqual(batch.operations, before.operations)
        self.assertEqual(batch.changes, before.changes)
        self.assertEqual(batch.blob_references, before.blob_references)
        self.assertIs(batch.blob_references[BLOB_A], blob_entry)
        self.assertEqual(batch.expected_modseqs, before.expected_modseqs)
        self.assertEqual(batch.to_bytes(), before.to_bytes())
        self.assertEqual(batch.operations_on("principals"), before.operations)
        self.assertEqual(batch.operations_on("principal_emails"), [])

    def test_savepoint_keeps_on_success(self):
        """A savepoint whose block ends normally keeps what it added."""
        batch = WriteBatch()
        with batch.savepoint():
            batch.insert("principals", **principal_row(3, "carol"))
            batch.reference_blob(BLOB_A, 10)
        self.assertEqual(len(batch.operations), 1)
        self.assertEqual(batch.blob_references, {BLOB_A: [1, 10]})
        self.assertEqual(batch._journal, [])

    def test_nested_savepoints(self):
        """An inner rollback undoes its block alone; an outer one undoes a kept inner one."""
        batch = WriteBatch()
        batch.insert("principals", **principal_row(3, "carol"))
        with batch.savepoint():
            batch.insert("principals", **principal_row(4, "dave"))
            with self.assertRaises(Boom):
                with batch.savepoint():
                    batch.insert("principals", **principal_row(5, "erin"))
                    batch.reference_blob(BLOB_A, 1)
                    raise Boom()
            batch.expect_modseq(0, 2)
        self.assertEqual([op[2]["name"] for op in batch.operations_on("principals")],
                         ["carol", "dave"])
        self.assertEqual((batch.blob_references, batch.expected_modseqs), ({}, {0: 2}))

        with self.assertRaises(Boom):
            with batch.savepoint():
                with batch.savepoint():
                    batch.insert("principals", **principal_row(6, "fay"))
                    batch.expect_modseq(0, 3)
                    batch.log_change(0, "Principal", 6, "created")
                raise Boom()
        self.assertEqual([op[2]["name"] for op in batch.operations_on("principals")],
                         ["carol", "dave"])
        self.assertEqual((batch.changes, batch.expected_modseqs), ([], {0: 2}))

    @defer.inlineCallbacks
    def test_draft_after_rollback(self):
        """A Draft forgets rolled-back rows, even once the batch regrows to the same length."""

        def build(draft):
            seen = []
            # (Not a module-level "suppress": trial reads that name.) The savepoint
            # rolls back, and the Boom is the expected end.
            with contextlib.suppress(Boom), draft.batch.savepoint():
                draft.batch.insert("principals", **principal_row(3, "carol"))
                draft.batch.delete("principals", name="bob")
                seen.append(names(draft.rows("principals")))
                raise Boom()
            seen.append(names(draft.rows("principals")))
            draft.batch.insert("principals", **principal_row(5, "dave"))
            draft.batch.update("principals", {"id": 1}, name="alicia")
            seen.append(names(draft.rows("principals")))
            return seen

        seen = yield self.in_draft(build)
        self.assertEqual(seen, [
            ["alice", "carol", "anna"],
            ["alice", "bob", "anna"],
            ["alicia", "bob", "anna", "dave"],
        ])

    def test_operations_on(self):
        """operations_on gives a table's operations in order, and only that table's."""
        batch = WriteBatch()
        batch.insert("principals", **principal_row(3, "carol"))
        batch.insert("principal_emails", address="c@example.org", principal_id=3, is_alias=False)
        batch.delete("principals", id=3)
        self.assertEqual(batch.operations_on("principals"),
                         [batch.operations[0], batch.operations[2]])
        self.assertEqual(batch.operations_on("principal_emails"), [batch.operations[1]])
        self.assertEqual(batch.operations_on("id_sequences"), [])

    def test_operations_on_after_round_trip(self):
        """A batch decoded from its bytes still answers operations_on."""
        batch = WriteBatch()
        batch.insert("principals", **principal_row(3, "carol"))
        batch.update("principal_emails", {"address": "c@example.org"}, is_alias=True)
        batch.delete("principals", id=3)
        batch.operations_on("principals")
        decoded = WriteBatch.from_bytes(batch.to_bytes())
        self.assertEqual(decoded.operations_on("principals"), batch.operations_on("principals"))
        self.assertEqual(decoded.operations_on("principal_emails"),
                         [("u", "principal_emails", {"address": "c@example.org"},
                           {"is_alias": True})])

    @defer.inlineCallbacks
    def test_commit_gives_what_draft_predicted(self):
        """Committing a mixed batch leaves exactly the rows its Draft predicted, table by table."""
        tables = [schema.principals, schema.principal_emails, schema.principal_members,
                  schema.id_sequences]

        def build(connection):
            draft = Draft(connection, WriteBatch())
            batch = draft.batch
            batch.update("id_sequences", {"name": "Principal"}, last_value=6)
            batch.insert("principals", **principal_row(5, "carol", quota=3))
            batch.insert("principals", id=6, kind="group", name="team", created_at=2)
            batch.insert("principal_emails", address="carol@example.org", principal_id=5,
                         is_alias=0)
            batch.update("principal_emails", {"principal_id": 1}, is_alias=True)
            batch.update("principal_emails", {"address": "bob@example.org"},
                         address="robert@example.org")
            batch.update("principals", {"id": 2}, name="robert")
            batch.update("principals", {"description": None}, quota=77)
            batch.delete("principal_emails", principal_id=4)
            batch.delete("principal_members", group_id=4)
            batch.delete("principals", name="anna")
            batch.insert("principal_members", group_id=6, member_id=5)
            batch.insert("principal_members", group_id=6, member_id=2)
            batch.update("principals", {"name": "team"}, description="The team")
            return batch, {table.name: draft.rows(table.name) for table in tables}

        batch, predicted = yield self.store.read(build)
        yield self.node.commit(batch)
        for table in tables:
            self.assertEqual((yield self.read_table(table)), predicted[table.name], table.name)
        self.assertEqual(names(predicted["principals"]), ["alice", "robert", "carol", "team"])
