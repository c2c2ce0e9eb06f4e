"""
Tests of the standard /copy method (RFC 8620 section 5.4).

No data type of the server has /copy yet (Email/copy will be the first),
so these run standard_copy over the notes type of the tests
(L{tests.notes}), stored like any type, committed through the writer.
"""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.jmap.dispatch import CallContext
from stalwart_tw.jmap.errors import MethodError
from stalwart_tw.jmap.session import account_id
from stalwart_tw.jmap.standard import standard_copy
from stalwart_tw.store.batch import WriteBatch
from stalwart_tw.store.changes import encode_state
from stalwart_tw.writer import AccountWriter
from tests.notes import NOTE, Notes, notes_table
from tests.support import open_store_and_node

HOME, TEAM, READ_ONLY = 1, 2, 3


def notes_of(connection, account):
    rows = connection.execute(notes_table.select().where(notes_table.c.account_id == account))
    return {row.id: {"id": row.id, "title": row.title, "body": row.body} for row in rows}


def seed(account, *notes):
    batch = WriteBatch()
    for note in notes:
        batch.insert("test_notes", account_id=account, **note)
        batch.log_change(account, NOTE, note["id"], "created")
    return batch


class CopyTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.store, self.node = yield open_store_and_node(self)
        self.writer = AccountWriter(self.store, self.node)
        self.notes = Notes(self.store, without_notes={READ_ONLY})
        yield self.node.commit(seed(
            HOME, {"id": "a", "title": "shopping", "body": "milk"},
            {"id": "b", "title": "todo", "body": "call"},
        ))
        self.context = CallContext(None, ("urn:test",), {}, (HOME, TEAM, READ_ONLY))

    def objects(self, account):
        return self.store.read(notes_of, account)

    def copy(self, create, **arguments):
        arguments = {"fromAccountId": account_id(HOME), "accountId": account_id(TEAM),
                     "create": create, **arguments}
        return defer.ensureDeferred(
            standard_copy(self.notes, self.writer, 10, self.context, arguments)
        )

    @defer.inlineCallbacks
    def failure(self, create, **arguments):
        error = yield self.assertFailure(self.copy(create, **arguments), MethodError)
        return error.arguments()

    @defer.inlineCallbacks
    def test_copy_with_overrides(self):
        """A copy gets a new id, the original's properties and the client's in their place."""
        response = yield self.copy({"k1": {"id": "a", "title": "groceries"}, "k2": {"id": "b"}})
        self.assertEqual(response["fromAccountId"], account_id(HOME))
        self.assertEqual(response["accountId"], account_id(TEAM))
        self.assertIsNone(response["notCreated"])
        new_a = response["created"]["k1"]["id"]
        self.assertNotEqual(new_a, "a")
        self.assertEqual((yield self.objects(TEAM))[new_a],
                         {"id": new_a, "title": "groceries", "body": "milk"})
        self.assertEqual(self.context.created_ids["k1"], new_a)
        # Both copies are one batch: the state moves once.
        self.assertEqual((response["oldState"], response["newState"]),
                         (encode_state(0), encode_state(1)))
        self.assertIn("a", (yield self.objects(HOME)))

    @defer.inlineCallbacks
    def test_each_copy_on_its_own(self):
        """A missing original or an invalid result is a SetError for that copy only."""
        response = yield self.copy({
            "k1": {"id": "zzz"}, "k2": {"id": "a", "title": None}, "k3": {"id": "b"}})
        self.assertEqual(response["notCreated"]["k1"]["type"], "notFound")
        self.assertEqual(response["notCreated"]["k2"]["properties"], ["title"])
        self.assertEqual(list(response["created"]), ["k3"])

    @defer.inlineCallbacks
    def test_destroy_original(self):
        """onSuccessDestroyOriginal: an implicit Note/set destroys what was copied, in order."""
        responses = yield self.copy(
            {"k1": {"id": "a"}, "k2": {"id": "gone"}}, onSuccessDestroyOriginal=True)
        (copy_name, copied), (set_name, destroyed) = responses
        self.assertEqual((copy_name, set_name), ("Note/copy", "Note/set"))
        self.assertEqual(list(copied["created"]), ["k1"])
        self.assertEqual(destroyed["accountId"], account_id(HOME))
        self.assertEqual(destroyed["destroyed"], ["a"])
        self.assertNotIn("a", (yield self.objects(HOME)))

    @defer.inlineCallbacks
    def test_destroy_from_if_in_state(self):
        """A stale destroyFromIfInState fails the implicit /set only: the copy stays, so does the original."""
        responses = yield self.copy(
            {"k1": {"id": "a"}}, onSuccessDestroyOriginal=True, destroyFromIfInState="ff")
        (_, copied), (name, error) = responses
        self.assertEqual(list(copied["created"]), ["k1"])
        self.assertEqual((name, error["type"]), ("error", "stateMismatch"))
        self.assertIn("a", (yield self.objects(HOME)))

    @defer.inlineCallbacks
    def test_states(self):
        """ifFromInState and ifInState must match their accounts; a match copies."""
        error = yield self.failure({"k": {"id": "a"}}, ifFromInState="ff")
        self.assertEqual(error["type"], "stateMismatch")
        error = yield self.failure({"k": {"id": "a"}}, ifInState="ff")
        self.assertEqual(error["type"], "stateMismatch")
        self.assertEqual((yield self.objects(TEAM)), {})
        response = yield self.copy(
            {"k": {"id": "a"}}, ifFromInState=encode_state(1), ifInState=encode_state(0))
        self.assertEqual(list(response["created"]), ["k"])

    @defer.inlineCallbacks
    def test_if_in_state_until_the_commit(self):
        """A write to the target between the check and the commit is a stateMismatch."""
        real_commit = self.node.commit

        @defer.inlineCallbacks
        def a_rival_commits_first(batch):
            self.node.commit = real_commit
            yield real_commit(seed(TEAM, {"id": "r", "title": "rival"}))
            result = yield real_commit(batch)
            return result

        self.node.commit = a_rival_commits_first
        error = yield self.failure({"k": {"id": "a"}}, ifInState=encode_state(0))
        self.assertEqual(error["type"], "stateMismatch")
        self.assertEqual(list((yield self.objects(TEAM))), ["r"])

    @defer.inlineCallbacks
    def test_source_moved_before_the_commit(self):
        """A write to the source between the read and the commit: ifFromInState fails, else a fresh copy."""
        real_commit = self.node.commit
        rivals = []

        @defer.inlineCallbacks
        def the_source_moves_first(batch):
            if not rivals:
                rival = WriteBatch().update(
                    "test_notes", {"account_id": HOME, "id": "a"}, title="CHANGED")
                rivals.append(rival.log_change(HOME, NOTE, "a", "updated"))
                yield real_commit(rivals[-1])
            result = yield real_commit(batch)
            return result

        self.node.commit = the_source_moves_first
        error = yield self.failure({"k": {"id": "a"}}, ifFromInState=encode_state(1))
        self.assertEqual(error["type"], "stateMismatch")
        self.assertEqual((yield self.objects(TEAM)), {})
        rivals.clear()
        response = yield self.copy({"k": {"id": "a"}})
        copy_id = response["created"]["k"]["id"]
        self.assertEqual((yield self.objects(TEAM))[copy_id]["title"], "CHANGED")

    @defer.inlineCallbacks
    def test_accounts(self):
        """Unknown accounts, one account for both, a type an account lacks: precise errors."""
        cases = [
            ({"fromAccountId": account_id(99)}, "fromAccountNotFound"),
            ({"accountId": account_id(99)}, "accountNotFound"),
            ({"accountId": account_id(HOME)}, "invalidArguments"),
            ({"fromAccountId": account_id(READ_ONLY)}, "fromAccountNotSupportedByMethod"),
            ({"accountId": account_id(READ_ONLY)}, "accountNotSupportedByMethod"),
        ]
        for arguments, expected in cases:
            error = yield self.failure({"k": {"id": "a"}}, **arguments)
            self.assertEqual(error["type"], expected, arguments)

    @defer.inlineCallbacks
    def test_bad_arguments(self):
        """Wrong types and unknown arguments are invalidArguments; too many is requestTooLarge."""
        for create, extra in (
            ({"k": {"title": "no id"}}, {}),
            ({"k": "a"}, {}),
            ({"k": {"id": "a"}}, {"onSuccessDestroyOriginal": "yes"}),
            ({"k": {"id": "a"}}, {"ifInState": 1}),
            ({"k": {"id": "a"}}, {"bogus": 1}),
        ):
            error = yield self.failure(create, **extra)
            self.assertEqual(error["type"], "invalidArguments", (create, extra))
        many = {f"k{n}": {"id": "a"} for n in range(11)}
        self.assertEqual((yield self.failure(many))["type"], "requestTooLarge")

    @defer.inlineCallbacks
    def test_two_responses_one_call_id(self):
        """Through the method loop, /copy and its implicit /set answer under one call id."""
        from stalwart_tw.jmap.dispatch import MethodRegistry, run_request
        from stalwart_tw.jmap.request import Invocation, Request

        registry = MethodRegistry()
        registry.register(
            "Note/copy", "urn:test",
            lambda context, arguments: standard_copy(
                self.notes, self.writer, 10, context, arguments),
        )
        arguments = {"fromAccountId": account_id(HOME), "accountId": account_id(TEAM),
                     "create": {"k": {"id": "a"}}, "onSuccessDestroyOriginal": True}
        request = Request(("urn:test",), [Invocation("Note/copy", arguments, "c0")], {})
        document = yield defer.ensureDeferred(
            run_request(registry, request, None, "s", (HOME, TEAM)))
        names = [(name, call_id) for name, _, call_id in document["methodResponses"]]
        self.assertEqual(names, [("Note/copy", "c0"), ("Note/set", "c0")])
        self.assertEqual(list(document["createdIds"]), ["k"])

    @defer.inlineCallbacks
    def test_all_or_nothing(self):
        """An unforeseen failure while building the second copy commits neither."""
        real_create = self.notes.build_create
        calls = []

        def second_one_breaks(draft, call, creation_id, properties):
            calls.append(properties)
            if len(calls) == 2:
                raise RuntimeError("disk on fire")
            return real_create(draft, call, creation_id, properties)

        self.notes.build_create = second_one_breaks
        index = self.node.applied_index
        yield self.assertFailure(self.copy({"k1": {"id": "a"}, "k2": {"id": "b"}}), RuntimeError)
        self.assertEqual((yield self.objects(TEAM)), {})
        self.assertEqual(self.node.applied_index, index)

    @defer.inlineCallbacks
    def test_read_only_accounts(self):
        """
        No copy into an account the caller may only read (accountReadOnly);
        from one, the implicit /set that would destroy the originals is
        refused the same way while the copies stand.
        """
        self.context.read_only = frozenset({TEAM})
        error = yield self.failure({"k": {"id": "a"}})
        self.assertEqual(error["type"], "accountReadOnly")
        self.context.read_only = frozenset({HOME})
        (_, copied), (name, error) = yield self.copy(
            {"k": {"id": "a"}}, onSuccessDestroyOriginal=True)
        self.assertEqual(list(copied["created"]), ["k"])
        self.assertEqual((name, error["type"]), ("error", "accountReadOnly"))
        self.assertIn("a", (yield self.objects(HOME)))
