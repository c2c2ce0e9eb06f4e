"""
Tests of the standard /copy method (RFC 8620 section 5.4).

No data type of the server has /copy yet (Email/copy will be the first),
so these run standard_copy over a small in-memory type that keeps its
objects and states per account the way a stored type does.
"""

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.jmap.dispatch import CallContext
from stalwart_tw.jmap.errors import MethodError
from stalwart_tw.jmap.session import account_id
from stalwart_tw.jmap.standard import SetError, WritableType, standard_copy
from stalwart_tw.store.changes import Changes, encode_state
from stalwart_tw.store.errors import StateChanged

HOME, TEAM, READ_ONLY = 1, 2, 3


class Notes(WritableType):
    """Notes ({id, title, body}) by account; a modseq per account."""

    name = "Note"
    properties = frozenset({"id", "title", "body"})

    def __init__(self):
        self.objects = {HOME: {}, TEAM: {}, READ_ONLY: {}}
        self.modseqs = dict.fromkeys(self.objects, 1)
        self._next = 100

    def supports_account(self, account):
        return account != READ_ONLY

    async def read(self, context, account, ids):
        found = self.objects[account]
        wanted = found if ids is None else ids
        return {i: dict(found[i]) for i in wanted if i in found}

    async def modseq(self, context, account):
        return self.modseqs[account]

    async def changes(self, context, account, since_modseq, max_changes):
        return Changes([], [], [], self.modseqs[account], False)

    def _write(self, account, guard):
        if guard.modseq is not None and guard.modseq != self.modseqs[account]:
            raise StateChanged("moved")
        self.modseqs[account] += 1
        guard.passed()

    async def create(self, context, account, properties, guard):
        if not isinstance(properties.get("title"), str):
            raise SetError("invalidProperties", "title is required", ["title"])
        self._write(account, guard)
        self._next += 1
        new_id = f"n{self._next}"
        self.objects[account][new_id] = {**properties, "id": new_id}
        return {"id": new_id}

    async def update(self, context, account, object_id, current, patched, guard):
        self._write(account, guard)
        self.objects[account][object_id] = patched

    async def destroy(self, context, account, object_id, guard):
        self._write(account, guard)
        del self.objects[account][object_id]


class CopyTests(TestCase):
    def setUp(self):
        self.notes = Notes()
        self.notes.objects[HOME]["a"] = {"id": "a", "title": "shopping", "body": "milk"}
        self.notes.objects[HOME]["b"] = {"id": "b", "title": "todo", "body": "call"}
        self.context = CallContext(None, ("urn:test",), {}, (HOME, TEAM, READ_ONLY))

    def copy(self, create, **arguments):
        arguments = {"fromAccountId": account_id(HOME), "accountId": account_id(TEAM),
                     "create": create, **arguments}
        return defer.ensureDeferred(standard_copy(self.notes, 10, self.context, arguments))

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
        self.assertEqual(self.notes.objects[TEAM][new_a],
                         {"id": new_a, "title": "groceries", "body": "milk"})
        self.assertEqual(self.context.created_ids["k1"], new_a)
        self.assertEqual((response["oldState"], response["newState"]),
                         (encode_state(1), encode_state(3)))
        self.assertIn("a", self.notes.objects[HOME])

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
        self.assertNotIn("a", self.notes.objects[HOME])

    @defer.inlineCallbacks
    def test_destroy_from_if_in_state(self):
        """A stale destroyFromIfInState fails the implicit /set only: the copy stays, so does the original."""
        responses = yield self.copy(
            {"k1": {"id": "a"}}, onSuccessDestroyOriginal=True, destroyFromIfInState="ff")
        (_, copied), (name, error) = responses
        self.assertEqual(list(copied["created"]), ["k1"])
        self.assertEqual((name, error["type"]), ("error", "stateMismatch"))
        self.assertIn("a", self.notes.objects[HOME])

    @defer.inlineCallbacks
    def test_states(self):
        """ifFromInState and ifInState must match their accounts; a match copies."""
        error = yield self.failure({"k": {"id": "a"}}, ifFromInState="ff")
        self.assertEqual(error["type"], "stateMismatch")
        error = yield self.failure({"k": {"id": "a"}}, ifInState="ff")
        self.assertEqual(error["type"], "stateMismatch")
        self.assertEqual(self.notes.objects[TEAM], {})
        response = yield self.copy(
            {"k": {"id": "a"}}, ifFromInState=encode_state(1), ifInState=encode_state(1))
        self.assertEqual(list(response["created"]), ["k"])

    @defer.inlineCallbacks
    def test_if_in_state_until_the_first_copy(self):
        """A write to the target between the check and the first copy is a stateMismatch."""
        real_modseq = self.notes.modseq

        async def checked_then_moved(context, account):
            modseq = await real_modseq(context, account)
            self.notes.modseqs[TEAM] += 1
            return modseq

        self.notes.modseq = checked_then_moved
        error = yield self.failure({"k": {"id": "a"}}, ifInState=encode_state(1))
        self.assertEqual(error["type"], "stateMismatch")
        self.assertEqual(self.notes.objects[TEAM], {})

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
        registry.register("Note/copy", "urn:test",
                          lambda context, arguments: standard_copy(self.notes, 10, context, arguments))
        arguments = {"fromAccountId": account_id(HOME), "accountId": account_id(TEAM),
                     "create": {"k": {"id": "a"}}, "onSuccessDestroyOriginal": True}
        request = Request(("urn:test",), [Invocation("Note/copy", arguments, "c0")], {})
        document = yield defer.ensureDeferred(
            run_request(registry, request, None, "s", (HOME, TEAM)))
        names = [(name, call_id) for name, _, call_id in document["methodResponses"]]
        self.assertEqual(names, [("Note/copy", "c0"), ("Note/set", "c0")])
        self.assertEqual(list(document["createdIds"]), ["k"])

    @defer.inlineCallbacks
    def test_partial_failure(self):
        """An unforeseen failure after a copy committed is serverPartialFail, and logged."""
        real_create = self.notes.create
        calls = []

        async def second_one_breaks(context, account, properties, guard):
            calls.append(properties)
            if len(calls) == 2:
                raise RuntimeError("disk on fire")
            return await real_create(context, account, properties, guard)

        self.notes.create = second_one_breaks
        error = yield self.failure({"k1": {"id": "a"}, "k2": {"id": "b"}})
        self.assertEqual(error["type"], "serverPartialFail")
        self.assertEqual(len(self.notes.objects[TEAM]), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # Before any write, the same failure is the caller's serverFail.
        calls.clear()
        calls.append(None)
        yield self.assertFailure(self.copy({"k": {"id": "a"}}), RuntimeError)

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
        self.assertIn("a", self.notes.objects[HOME])
