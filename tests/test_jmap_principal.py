"""
Principal/get and Principal/changes over real HTTP: the standard /get and
/changes machinery proven on the directory.
"""

import json
from base64 import b64encode
from dataclasses import replace

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.jmap.principal import principal_id, principal_number
from stalwart_tw.jmap.session import account_id
from stalwart_tw.store.changes import decode_state
from stalwart_tw.store.principal_changes import (
    _build_create,
    _new_principal,
    plan_directory_change,
)
from stalwart_tw.store.schema import DIRECTORY_ACCOUNT
from stalwart_tw.writer import _build as writer_build
from tests.support import NodeServiceMixin

USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:principals"]


def credentials(login, password):
    return {b"Authorization": [b"Basic " + b64encode(f"{login}:{password}".encode())],
            b"Content-Type": [b"application/json"]}


class PrincipalTestCase(NodeServiceMixin, TestCase):
    settings_overrides = {}

    @defer.inlineCallbacks
    def setUp(self):
        service = yield self.start_with_client(**self.settings_overrides)
        directory = service.directory
        self.admin = yield directory.get("admin")
        yield directory.create_principal("domain", "example.org")
        self.jane = yield directory.create_principal(
            "individual", "jane", secret="jane-password", email="jane@example.org"
        )
        self.bob = yield directory.create_principal("individual", "bob", secret="bob-password")
        self.sales = yield directory.create_principal("group", "sales", members=["jane"])
        self.url = self.base + "/jmap/"

    @defer.inlineCallbacks
    def call(self, who, calls, using=USING):
        login, password = who
        response = yield self.http.post(
            self.url,
            data=json.dumps({"using": using, "methodCalls": calls}).encode(),
            headers=credentials(login, password),
        )
        self.assertEqual(response.code, 200)
        return (yield response.json())["methodResponses"]

    @defer.inlineCallbacks
    def one(self, who, name, arguments, using=USING):
        responses = yield self.call(who, [[name, arguments, "c"]], using)
        return responses[0]

    as_admin = ("admin", "the-service-secret")
    as_jane = ("jane", "jane-password")


class PrincipalGetTests(PrincipalTestCase):
    """
    Principal/get: visibility, properties, limits and errors.
    """

    @defer.inlineCallbacks
    def test_admin_sees_everyone(self):
        """With ids null the admin gets every principal, and a state."""
        name, result, call_id = yield self.one(
            self.as_admin, "Principal/get", {"accountId": account_id(self.admin.id), "ids": None}
        )
        self.assertEqual((name, call_id), ("Principal/get", "c"))
        names = sorted(p["name"] for p in result["list"])
        self.assertEqual(names, ["admin", "bob", "example.org", "jane", "sales"])
        self.assertEqual(result["notFound"], [])
        self.assertTrue(result["state"])

    @defer.inlineCallbacks
    def test_user_sees_self_and_groups(self):
        """A user sees themselves and their groups; anyone else is notFound."""
        _, result, _ = yield self.one(self.as_jane, "Principal/get", {
            "accountId": account_id(self.jane.id),
            "ids": [principal_id(self.jane.id), principal_id(self.sales.id),
                    principal_id(self.bob.id), "p-nonsense"],
        })
        self.assertEqual({p["name"] for p in result["list"]}, {"jane", "sales"})
        self.assertEqual(result["notFound"], [principal_id(self.bob.id), "p-nonsense"])

    @defer.inlineCallbacks
    def test_object_shape(self):
        """A principal carries its type, addresses and members, never a secret."""
        _, result, _ = yield self.one(self.as_jane, "Principal/get", {
            "accountId": account_id(self.jane.id),
            "ids": [principal_id(self.sales.id), principal_id(self.jane.id)],
        })
        by_name = {p["name"]: p for p in result["list"]}
        self.assertEqual(by_name["sales"]["type"], "group")
        self.assertEqual(by_name["sales"]["members"], [principal_id(self.jane.id)])
        self.assertEqual(by_name["jane"]["email"], "jane@example.org")
        for principal in result["list"]:
            self.assertNotIn("secret", principal)

    @defer.inlineCallbacks
    def test_properties(self):
        """Only the properties asked for come back, id always; an unknown one is refused."""
        _, result, _ = yield self.one(self.as_jane, "Principal/get", {
            "accountId": account_id(self.jane.id), "ids": [principal_id(self.jane.id)],
            "properties": ["name"],
        })
        self.assertEqual(result["list"], [{"id": principal_id(self.jane.id), "name": "jane"}])
        name, error, _ = yield self.one(self.as_jane, "Principal/get", {
            "accountId": account_id(self.jane.id), "properties": ["password"],
        })
        self.assertEqual((name, error["type"]), ("error", "invalidArguments"))

    @defer.inlineCallbacks
    def test_duplicate_ids_once(self):
        """An id asked for twice is answered once."""
        jane = principal_id(self.jane.id)
        _, result, _ = yield self.one(self.as_jane, "Principal/get", {
            "accountId": account_id(self.jane.id), "ids": [jane, jane],
        })
        self.assertEqual([p["id"] for p in result["list"]], [jane])

    @defer.inlineCallbacks
    def test_account_errors(self):
        """Another user's account or garbage is accountNotFound; a missing one invalidArguments."""
        for account in (account_id(self.bob.id), "a-x", "zzz"):
            _, error, _ = yield self.one(self.as_jane, "Principal/get", {"accountId": account})
            self.assertEqual(error["type"], "accountNotFound", account)
        _, error, _ = yield self.one(self.as_jane, "Principal/get", {"ids": None})
        self.assertEqual(error["type"], "invalidArguments")

    @defer.inlineCallbacks
    def test_wrong_argument_types(self):
        """Wrong types and unknown arguments are invalidArguments."""
        account = account_id(self.jane.id)
        for arguments in ({"accountId": account, "ids": "x"},
                          {"accountId": account, "ids": [1]},
                          {"accountId": account, "properties": "name"},
                          {"accountId": account, "colour": "red"},
                          {"accountId": 7}):
            _, error, _ = yield self.one(self.as_jane, "Principal/get", arguments)
            self.assertEqual(error["type"], "invalidArguments", arguments)

    @defer.inlineCallbacks
    def test_capability_required(self):
        """Without the principals capability in using, Principal/get is unknownMethod."""
        _, error, _ = yield self.one(
            self.as_jane, "Principal/get", {"accountId": account_id(self.jane.id)},
            using=["urn:ietf:params:jmap:core"],
        )
        self.assertEqual(error["type"], "unknownMethod")


class PrincipalGetLimitTests(PrincipalTestCase):
    """
    maxObjectsInGet bounds /get, whether ids are given or null.
    """

    settings_overrides = {"max-objects-in-get": "3"}

    @defer.inlineCallbacks
    def test_too_many_ids(self):
        """More ids than the limit is requestTooLarge."""
        ids = [principal_id(n) for n in range(1, 5)]
        _, error, _ = yield self.one(self.as_admin, "Principal/get", {
            "accountId": account_id(self.admin.id), "ids": ids})
        self.assertEqual(error["type"], "requestTooLarge")

    @defer.inlineCallbacks
    def test_null_ids_over_the_limit(self):
        """ids null when there are more objects than the limit is requestTooLarge."""
        _, error, _ = yield self.one(self.as_admin, "Principal/get", {
            "accountId": account_id(self.admin.id), "ids": None})
        self.assertEqual(error["type"], "requestTooLarge")


class PrincipalChangesTests(PrincipalTestCase):
    """
    Principal/changes follows the directory's change log.
    """

    @defer.inlineCallbacks
    def state(self, who=PrincipalTestCase.as_admin, account=None):
        account = account or account_id(self.admin.id)
        _, result, _ = yield self.one(who, "Principal/get", {"accountId": account, "ids": []})
        return result["state"]

    @defer.inlineCallbacks
    def test_created_and_new_state(self):
        """A new principal shows as created; newState equals the next /get state."""
        before = yield self.state()
        carol = yield self.service.directory.create_principal("individual", "carol")
        _, result, _ = yield self.one(self.as_admin, "Principal/changes", {
            "accountId": account_id(self.admin.id), "sinceState": before})
        self.assertEqual(result["oldState"], before)
        self.assertEqual(result["created"], [principal_id(carol.id)])
        self.assertEqual((result["updated"], result["destroyed"]), ([], []))
        self.assertFalse(result["hasMoreChanges"])
        self.assertEqual(result["newState"], (yield self.state()))

    @defer.inlineCallbacks
    def test_max_changes_pages(self):
        """maxChanges 1 over two changes gives one id and hasMoreChanges, then the rest."""
        before = yield self.state()
        yield self.service.directory.create_principal("individual", "carol")
        yield self.service.directory.create_principal("individual", "dave")
        arguments = {"accountId": account_id(self.admin.id), "sinceState": before,
                     "maxChanges": 1}
        _, first, _ = yield self.one(self.as_admin, "Principal/changes", arguments)
        self.assertEqual(len(first["created"]), 1)
        self.assertTrue(first["hasMoreChanges"])
        arguments["sinceState"] = first["newState"]
        _, second, _ = yield self.one(self.as_admin, "Principal/changes", arguments)
        self.assertEqual(len(second["created"]), 1)
        self.assertFalse(second["hasMoreChanges"])

    @defer.inlineCallbacks
    def test_user_sees_only_visible_changes(self):
        """
        A user is told of changes to principals they can see; a change to
        one they cannot is cannotCalculateChanges, which names no id.
        """
        account = account_id(self.jane.id)
        before = yield self.state(self.as_jane, account)
        yield self.service.directory.update("jane", description="Jane D.")
        _, result, _ = yield self.one(self.as_jane, "Principal/changes", {
            "accountId": account, "sinceState": before})
        self.assertEqual(result["updated"], [principal_id(self.jane.id)])
        self.assertEqual((result["created"], result["destroyed"]), ([], []))
        carol = yield self.service.directory.create_principal("individual", "carol")
        name, error, _ = yield self.one(self.as_jane, "Principal/changes", {
            "accountId": account, "sinceState": result["newState"]})
        self.assertEqual((name, error["type"]), ("error", "cannotCalculateChanges"))
        self.assertNotIn(principal_id(carol.id), json.dumps(error))

    @defer.inlineCallbacks
    def test_bad_arguments(self):
        """A foreign state is cannotCalculateChanges; maxChanges 0 is invalidArguments."""
        account = account_id(self.admin.id)
        _, error, _ = yield self.one(self.as_admin, "Principal/changes", {
            "accountId": account, "sinceState": "not-a-state"})
        self.assertEqual(error["type"], "cannotCalculateChanges")
        _, error, _ = yield self.one(self.as_admin, "Principal/changes", {
            "accountId": account, "sinceState": (yield self.state()), "maxChanges": 0})
        self.assertEqual(error["type"], "invalidArguments")
        _, error, _ = yield self.one(self.as_admin, "Principal/changes", {"accountId": account})
        self.assertEqual(error["type"], "invalidArguments")

    @defer.inlineCallbacks
    def test_changes_then_get_by_reference(self):
        """Principal/get can take its ids from Principal/changes in the same request."""
        before = yield self.state()
        carol = yield self.service.directory.create_principal("individual", "carol")
        account = account_id(self.admin.id)
        responses = yield self.call(self.as_admin, [
            ["Principal/changes", {"accountId": account, "sinceState": before}, "c0"],
            ["Principal/get", {"accountId": account, "#ids": {
                "resultOf": "c0", "name": "Principal/changes", "path": "/created"}}, "c1"],
        ])
        self.assertEqual([p["name"] for p in responses[1][1]["list"]], ["carol"])
        self.assertEqual(responses[1][1]["list"][0]["id"], principal_id(carol.id))


class SessionPrincipalsTests(PrincipalTestCase):
    """
    The Session advertises the principals capability.
    """

    @defer.inlineCallbacks
    def test_capability_in_session(self):
        """The capability is listed, primary on the user's account, with their principal id."""
        response = yield self.http.get(
            self.url + "session", headers=credentials("jane", "jane-password"))
        session = yield response.json()
        capability = "urn:ietf:params:jmap:principals"
        self.assertIn(capability, session["capabilities"])
        own = account_id(self.jane.id)
        self.assertEqual(session["primaryAccounts"][capability], own)
        self.assertEqual(
            session["accounts"][own]["accountCapabilities"][capability],
            {"currentUserPrincipalId": principal_id(self.jane.id)},
        )


class PrincipalSetTests(PrincipalTestCase):
    """
    Principal/set: the admin creates, updates and destroys principals.
    """

    def set_call(self, arguments, who=PrincipalTestCase.as_admin):
        arguments = {"accountId": account_id(self.admin.id), **arguments}
        return self.one(who, "Principal/set", arguments)

    @defer.inlineCallbacks
    def test_create_with_creation_reference(self):
        """A group created in the same /set can name a new member by creation id."""
        name, result, _ = yield self.set_call({"create": {
            "k1": {"type": "individual", "name": "carol", "secret": "carol-pw"},
            "k2": {"type": "group", "name": "ops", "members": ["#k1"]},
        }})
        self.assertEqual(name, "Principal/set")
        self.assertIsNone(result["notCreated"])
        carol, ops = result["created"]["k1"]["id"], result["created"]["k2"]["id"]
        _, got, _ = yield self.one(self.as_admin, "Principal/get", {
            "accountId": account_id(self.admin.id), "ids": [ops]})
        self.assertEqual(got["list"][0]["members"], [carol])
        self.assertNotEqual(result["oldState"], result["newState"])

    @defer.inlineCallbacks
    def test_created_individual_has_an_account(self):
        """A created individual can log in and finds its own account in the Session."""
        _, result, _ = yield self.set_call({"create": {
            "k1": {"type": "individual", "name": "carol", "secret": "carol-pw"}}})
        number = principal_number(result["created"]["k1"]["id"])
        response = yield self.http.get(self.url + "session", headers=credentials("carol", "carol-pw"))
        self.assertEqual(response.code, 200)
        self.assertIn(account_id(number), (yield response.json())["accounts"])

    @defer.inlineCallbacks
    def test_update_and_idempotent_update(self):
        """An update applies; setting values to what they are succeeds and changes nothing."""
        jane = principal_id(self.jane.id)
        _, result, _ = yield self.set_call({"update": {jane: {"description": "Jane D."}}})
        self.assertEqual(result["updated"], {jane: None})
        state = result["newState"]
        _, result, _ = yield self.set_call({"update": {jane: {"description": "Jane D.",
                                                              "name": "jane"}}})
        self.assertEqual(result["updated"], {jane: None})
        self.assertEqual(result["newState"], state)

    @defer.inlineCallbacks
    def test_alias_promotion_in_one_update(self):
        """Swapping the primary address with an alias is one accepted update."""
        jane = principal_id(self.jane.id)
        yield self.set_call({"update": {jane: {"aliases": ["j@example.org"]}}})
        _, result, _ = yield self.set_call({"update": {jane: {
            "email": "j@example.org", "aliases": ["jane@example.org"]}}})
        self.assertIsNone(result["notUpdated"])
        fresh = yield self.service.directory.get("jane")
        self.assertEqual((fresh.email, fresh.aliases), ("j@example.org", ("jane@example.org",)))

    @defer.inlineCallbacks
    def test_refused_updates(self):
        """Server-set properties, unknown ids, patches into arrays and unknown properties are refused."""
        jane = principal_id(self.jane.id)
        _, result, _ = yield self.set_call({"update": {
            jane: {"type": "group"},
            principal_id(9999): {"description": "x"},
            principal_id(self.sales.id): {"members/0": "x"},
            principal_id(self.bob.id): {"colour": "red"},
        }})
        errors = result["notUpdated"]
        self.assertEqual(errors[jane]["type"], "invalidProperties")
        self.assertEqual(errors[jane]["properties"], ["type"])
        self.assertEqual(errors[principal_id(9999)]["type"], "notFound")
        self.assertEqual(errors[principal_id(self.sales.id)]["type"], "invalidPatch")
        self.assertEqual(errors[principal_id(self.bob.id)]["type"], "invalidProperties")

    @defer.inlineCallbacks
    def test_duplicate_name(self):
        """Creating a principal with a name in use is invalidProperties on name."""
        _, result, _ = yield self.set_call({"create": {"k": {"type": "individual",
                                                             "name": "bob"}}})
        self.assertEqual(result["notCreated"]["k"]["type"], "invalidProperties")
        self.assertEqual(result["notCreated"]["k"]["properties"], ["name"])

    @defer.inlineCallbacks
    def test_destroy(self):
        """Destroying removes the principal; the admin cannot be destroyed; update+destroy is willDestroy."""
        bob = principal_id(self.bob.id)
        admin = principal_id(self.admin.id)
        _, result, _ = yield self.set_call({
            "update": {bob: {"description": "leaving"}}, "destroy": [bob, admin]})
        self.assertEqual(result["destroyed"], [bob])
        self.assertEqual(result["notUpdated"][bob]["type"], "willDestroy")
        self.assertEqual(result["notDestroyed"][admin]["type"], "forbidden")
        self.assertIsNone((yield self.service.directory.get("bob")))

    @defer.inlineCallbacks
    def test_if_in_state(self):
        """A stale ifInState is stateMismatch and nothing is written."""
        _, result, _ = yield self.set_call({"ifInState": "0", "create": {
            "k": {"type": "individual", "name": "carol"}}})
        self.assertEqual(result["type"], "stateMismatch")
        self.assertIsNone((yield self.service.directory.get("carol")))

    @defer.inlineCallbacks
    def test_if_in_state_holds_until_the_commit(self):
        """
        A write that lands between the ifInState check and the /set's
        commit (another node's, past this node's lock) makes the /set a
        stateMismatch with nothing written; with no rival, every change of
        the /set applies.
        """
        account = account_id(self.admin.id)
        _, got, _ = yield self.one(self.as_admin, "Principal/get", {"accountId": account, "ids": []})
        node, store = self.service.node, self.service.store
        real_commit = node.commit
        rival = replace(
            _new_principal("individual", "rival", None, None, None, (), (), 0, None),
            created_at=1,
        )

        @defer.inlineCallbacks
        def a_rival_commits_first(batch):
            node.commit = real_commit
            rival_batch, _ = yield store.read(
                writer_build, DIRECTORY_ACCOUNT, plan_directory_change, (_build_create, (rival,))
            )
            yield real_commit(rival_batch)
            result = yield real_commit(batch)
            return result

        node.commit = a_rival_commits_first
        two = {"k1": {"type": "individual", "name": "carol"},
               "k2": {"type": "individual", "name": "dave"}}
        _, result, _ = yield self.set_call({"ifInState": got["state"], "create": two})
        self.assertEqual(result["type"], "stateMismatch")
        self.assertIsNone((yield self.service.directory.get("carol")))
        self.assertIsNotNone((yield self.service.directory.get("rival")))
        _, got, _ = yield self.one(self.as_admin, "Principal/get", {"accountId": account, "ids": []})
        _, result, _ = yield self.set_call({"ifInState": got["state"], "create": two})
        self.assertEqual(sorted(result["created"]), ["k1", "k2"])
        self.assertEqual(result["oldState"], got["state"])

    @defer.inlineCallbacks
    def test_only_admin(self):
        """Anyone but the admin gets forbidden."""
        _, result, _ = yield self.one(self.as_jane, "Principal/set", {
            "accountId": account_id(self.jane.id),
            "update": {principal_id(self.jane.id): {"description": "me"}}})
        self.assertEqual(result["type"], "forbidden")

    @defer.inlineCallbacks
    def test_bad_arguments(self):
        """Wrong argument types are invalidArguments."""
        for arguments in ({"create": []}, {"update": {"x": 1}}, {"destroy": "x"},
                          {"destroy": [1]}):
            _, result, _ = yield self.set_call(arguments)
            self.assertEqual(result["type"], "invalidArguments", arguments)

    @defer.inlineCallbacks
    def test_created_ids_in_response(self):
        """createdIds given in the request come back with the new creation ids."""
        response = yield self.http.post(self.url, headers=credentials("admin", "the-service-secret"),
                                        data=json.dumps({
            "using": USING, "createdIds": {},
            "methodCalls": [["Principal/set", {"accountId": account_id(self.admin.id), "create": {
                "k1": {"type": "individual", "name": "carol"}}}, "c"]]}).encode())
        document = yield response.json()
        created = document["methodResponses"][0][1]["created"]["k1"]["id"]
        self.assertEqual(document["createdIds"], {"k1": created})


class PrincipalOneBatchTests(PrincipalTestCase):
    """
    A Principal/set is one batch: one commit however many objects, each
    object seeing those built before it, refused ones left out.
    """

    def set_call(self, arguments):
        return self.one(
            self.as_admin, "Principal/set", {"accountId": account_id(self.admin.id), **arguments}
        )

    @defer.inlineCallbacks
    def test_twenty_creates_one_commit(self):
        """Twenty creates move the applied index by exactly one, and the state by one."""
        before = self.service.node.applied_index
        creates = {f"k{n}": {"type": "individual", "name": f"user{n}"} for n in range(20)}
        _, result, _ = yield self.set_call({"create": creates})
        self.assertEqual(len(result["created"]), 20)
        self.assertEqual(self.service.node.applied_index, before + 1)
        self.assertEqual(decode_state(result["newState"]), decode_state(result["oldState"]) + 1)
        ids = {created["id"] for created in result["created"].values()}
        self.assertEqual(len(ids), 20)
        _, changes, _ = yield self.one(self.as_admin, "Principal/changes", {
            "accountId": account_id(self.admin.id), "sinceState": result["oldState"]})
        self.assertEqual(set(changes["created"]), ids)
        self.assertEqual(changes["newState"], result["newState"])

    @defer.inlineCallbacks
    def test_changes_page_through_one_call(self):
        """A client with a small maxChanges pages through one big /set, nothing lost."""
        creates = {f"k{n}": {"type": "individual", "name": f"user{n}"} for n in range(12)}
        _, result, _ = yield self.set_call({"create": creates})
        state, pages, seen = result["oldState"], [], []
        while True:
            _, page, _ = yield self.one(self.as_admin, "Principal/changes", {
                "accountId": account_id(self.admin.id), "sinceState": state, "maxChanges": 5})
            pages.append(len(page["created"]))
            seen.extend(page["created"])
            state = page["newState"]
            if not page["hasMoreChanges"]:
                break
        self.assertEqual(pages, [5, 5, 2])
        self.assertEqual(sorted(seen), sorted(c["id"] for c in result["created"].values()))
        self.assertEqual(state, result["newState"])

    @defer.inlineCallbacks
    def test_refused_objects_left_out(self):
        """Refused objects are reported and leave nothing behind; the rest is one commit."""
        before = self.service.node.applied_index
        _, result, _ = yield self.set_call({"create": {
            "good1": {"type": "individual", "name": "carol", "email": "carol@example.org"},
            "spaced": {"type": "individual", "name": "has space", "email": "x@example.org"},
            "taken": {"type": "individual", "name": "jane"},
            "stolen": {"type": "individual", "name": "mallory", "email": "carol@example.org"},
            "good2": {"type": "individual", "name": "dave"},
        }})
        self.assertEqual(sorted(result["created"]), ["good1", "good2"])
        self.assertEqual(sorted(result["notCreated"]), ["spaced", "stolen", "taken"])
        self.assertEqual(result["notCreated"]["taken"]["properties"], ["name"])
        self.assertEqual(result["notCreated"]["stolen"]["properties"], ["email", "aliases"])
        self.assertEqual(self.service.node.applied_index, before + 1)
        self.assertIsNone((yield self.service.directory.get("mallory")))
        # The address of the refused object was never taken.
        self.assertIsNone((yield self.service.directory.lookup_address("x@example.org")))

    @defer.inlineCallbacks
    def test_later_objects_see_earlier_ones(self):
        """A domain, an address in it, a group of a new member, a rename and its old name: one call."""
        _, result, _ = yield self.set_call({
            "create": {
                "dom": {"type": "domain", "name": "new.org"},
                "carol": {"type": "individual", "name": "carol", "email": "carol@new.org"},
                "team": {"type": "group", "name": "team", "members": ["#carol"]},
                "again": {"type": "individual", "name": "carol"},
                "bob2": {"type": "individual", "name": "bobby"},
            },
            "update": {
                "#carol": {"description": "new here", "aliases": ["c@new.org"]},
                principal_id(self.bob.id): {"name": "robert"},
            },
        })
        self.assertEqual(sorted(result["created"]), ["bob2", "carol", "dom", "team"])
        self.assertEqual(result["notCreated"]["again"]["properties"], ["name"])
        carol_id = result["created"]["carol"]["id"]
        self.assertEqual(sorted(result["updated"]), sorted([carol_id, principal_id(self.bob.id)]))
        carol = yield self.service.directory.get("carol")
        self.assertEqual((carol.email, carol.aliases, carol.description),
                         ("carol@new.org", ("c@new.org",), "new here"))
        team = yield self.service.directory.get("team")
        self.assertEqual(team.members, ("carol",))
        self.assertIsNone((yield self.service.directory.get("bob")))
        self.assertEqual((yield self.service.directory.get("robert")).id, self.bob.id)

    @defer.inlineCallbacks
    def test_create_then_destroy_in_one_call(self):
        """A destroy sees a principal created earlier in the call, and the group it joined."""
        _, result, _ = yield self.set_call({
            "create": {"tmp": {"type": "individual", "name": "temp"},
                       "crew": {"type": "group", "name": "crew", "members": ["#tmp"]}},
            "destroy": ["#tmp"],
        })
        self.assertEqual(sorted(result["created"]), ["crew", "tmp"])
        self.assertEqual(result["destroyed"], [result["created"]["tmp"]["id"]])
        self.assertIsNone((yield self.service.directory.get("temp")))
        self.assertEqual((yield self.service.directory.get("crew")).members, ())

    @defer.inlineCallbacks
    def test_all_refused_commits_nothing(self):
        """A /set whose every object is refused commits no batch; its state stays."""
        before = self.service.node.applied_index
        _, result, _ = yield self.set_call({"create": {"k": {"type": "individual", "name": "jane"}}})
        self.assertEqual(list(result["notCreated"]), ["k"])
        self.assertEqual(result["newState"], result["oldState"])
        self.assertEqual(self.service.node.applied_index, before)

    @defer.inlineCallbacks
    def test_a_misshapen_object_fails_alone(self):
        """Values of the wrong JSON type are that object's invalidProperties; its siblings go on."""
        _, result, _ = yield self.set_call({
            "create": {"fine": {"type": "individual", "name": "fine"},
                       "nulls": {"type": "individual", "name": "nulls", "aliases": None,
                                 "members": None},
                       "bad": {"type": "individual", "name": "bad", "aliases": 5},
                       "badq": {"type": "individual", "name": "badq", "quota": "lots"}},
            "update": {principal_id(self.jane.id): {"aliases": 5},
                       principal_id(self.bob.id): {"secret": 12}},
        })
        self.assertEqual(sorted(result["created"]), ["fine", "nulls"])
        self.assertEqual(result["notCreated"]["bad"]["properties"], ["aliases"])
        self.assertEqual(result["notCreated"]["badq"]["properties"], ["quota"])
        self.assertEqual(result["notUpdated"][principal_id(self.jane.id)]["properties"],
                         ["aliases"])
        self.assertEqual(result["notUpdated"][principal_id(self.bob.id)]["properties"],
                         ["secret"])

    @defer.inlineCallbacks
    def test_invalid_properties_named(self):
        """Every invalidProperties SetError names the properties at fault."""
        creates = {
            "kind": ({"type": "robot", "name": "r2"}, ["type"]),
            "name": ({"type": "individual", "name": "two words"}, ["name"]),
            "domain": ({"type": "domain", "name": "not_a_domain"}, ["name"]),
            "email": ({"type": "individual", "name": "e", "email": "nobody"}, ["email"]),
            "alias": ({"type": "individual", "name": "a", "aliases": ["x@example.org", "bad"]},
                      ["aliases"]),
            "foreign": ({"type": "individual", "name": "f", "email": "f@elsewhere.net"},
                        ["email", "aliases"]),
            "quota": ({"type": "individual", "name": "q", "quota": -1}, ["quota"]),
            "zone": ({"type": "individual", "name": "z", "timeZone": "Mars/Olympus"},
                     ["timeZone"]),
            "secret": ({"type": "group", "name": "g", "secret": "a-secret"}, ["secret"]),
            "short": ({"type": "individual", "name": "s", "secret": "seven77"}, ["secret"]),
            "blank": ({"type": "individual", "name": "b", "secret": "          "}, ["secret"]),
            "members": ({"type": "individual", "name": "m", "members": [principal_id(self.bob.id)]},
                        ["members"]),
            "cycle": ({"type": "group", "name": "sales2", "members": ["#cycle"]}, ["members"]),
        }
        _, result, _ = yield self.set_call({
            "create": {key: properties for key, (properties, _) in creates.items()},
            "update": {principal_id(self.sales.id): {"members": [principal_id(self.sales.id)]},
                       principal_id(self.bob.id): {"email": "jane@example.org"}},
        })
        self.assertIsNone(result["created"])
        for key, (_, expected) in creates.items():
            error = result["notCreated"][key]
            self.assertEqual((error["type"], error.get("properties")),
                             ("invalidProperties", expected), key)
        refused = result["notUpdated"]
        self.assertEqual(refused[principal_id(self.sales.id)]["properties"], ["members"])
        self.assertEqual(refused[principal_id(self.bob.id)]["properties"], ["email", "aliases"])
        _, result, _ = yield self.set_call({
            "update": {principal_id(self.bob.id): {"secret": "short"}}})
        self.assertEqual(result["notUpdated"][principal_id(self.bob.id)]["properties"], ["secret"])

    @defer.inlineCallbacks
    def test_one_object_patched_once(self):
        """Two patches of one principal in a call (by id and by reference): the second is refused."""
        _, result, _ = yield self.set_call({
            "create": {"k": {"type": "individual", "name": "kim"}},
            "update": {"#k": {"secret": "first-secret"}},
        })
        kim = result["created"]["k"]["id"]
        _, result, _ = yield self.set_call({
            "create": {"k": {"type": "individual", "name": "lee"}},
            "update": {"#k": {"secret": "lee-secret"}, kim: {"secret": "kim-secret"}},
        })
        lee = result["created"]["k"]["id"]
        self.assertEqual(sorted(result["updated"]), sorted([lee, kim]))
        directory = self.service.directory
        self.assertIsNotNone((yield directory.authenticate("lee", "lee-secret")))
        self.assertIsNotNone((yield directory.authenticate("kim", "kim-secret")))
        # The next id is guessable: patched by reference and by id at once.
        next_id = principal_id(principal_number(lee) + 1)
        _, result, _ = yield self.set_call({
            "create": {"k": {"type": "individual", "name": "max"}},
            "update": {"#k": {"secret": "by-reference"}, next_id: {"secret": "by-id-secret"}},
        })
        self.assertEqual(result["created"]["k"]["id"], next_id)
        self.assertEqual(list(result["updated"]), [next_id])
        self.assertEqual(result["notUpdated"][next_id]["type"], "invalidPatch")
        self.assertIsNotNone((yield directory.authenticate("max", "by-reference")))
        self.assertIsNone((yield directory.authenticate("max", "by-id-secret")))

    @defer.inlineCallbacks
    def test_conflicts_twice(self):
        """A write that conflicts on its rebuild too is serverUnavailable, with nothing applied."""
        node, store = self.service.node, self.service.store
        real_commit = node.commit
        rivals = [replace(
            _new_principal("individual", f"rival{n}", None, None, None, (), (), 0, None),
            created_at=1,
        ) for n in range(2)]

        @defer.inlineCallbacks
        def a_rival_commits_first(batch):
            if rivals:
                rival_batch, _ = yield store.read(
                    writer_build, DIRECTORY_ACCOUNT, plan_directory_change,
                    (_build_create, (rivals.pop(0),)),
                )
                yield real_commit(rival_batch)
            result = yield real_commit(batch)
            return result

        node.commit = a_rival_commits_first
        _, result, _ = yield self.set_call({"create": {"k": {"type": "individual", "name": "kim"}}})
        node.commit = real_commit
        self.assertEqual(result["type"], "serverUnavailable")
        self.assertIsNone((yield self.service.directory.get("kim")))
        self.assertIsNotNone((yield self.service.directory.get("rival1")))
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_each_secret_to_its_principal(self):
        """Secrets set in one call are hashed for the right principals, updates by reference too."""
        _, result, _ = yield self.set_call({
            "create": {"a": {"type": "individual", "name": "anna", "secret": "anna-secret"},
                       "b": {"type": "individual", "name": "ben", "secret": "ben-secret"}},
            "update": {"#b": {"secret": "ben-second"},
                       principal_id(self.jane.id): {"secret": "jane-second"}},
        })
        self.assertEqual(len(result["updated"]), 2)
        directory = self.service.directory
        self.assertIsNotNone((yield directory.authenticate("anna", "anna-secret")))
        self.assertIsNone((yield directory.authenticate("anna", "ben-secret")))
        self.assertIsNone((yield directory.authenticate("ben", "ben-secret")))
        self.assertIsNotNone((yield directory.authenticate("ben", "ben-second")))
        self.assertIsNotNone((yield directory.authenticate("jane", "jane-second")))
        self.assertIsNone((yield directory.authenticate("jane", "jane-password")))


class PrincipalSetLimitTests(PrincipalTestCase):
    """
    maxObjectsInSet bounds /set.
    """

    settings_overrides = {"max-objects-in-set": "2"}

    @defer.inlineCallbacks
    def test_too_many(self):
        """More changes than maxObjectsInSet is requestTooLarge."""
        _, result, _ = yield self.one(self.as_admin, "Principal/set", {
            "accountId": account_id(self.admin.id),
            "destroy": [principal_id(n) for n in range(100, 103)]})
        self.assertEqual(result["type"], "requestTooLarge")


class PrincipalVisibilityChangesTests(PrincipalTestCase):
    """
    A user who loses sight of a principal learns to fetch again.
    """

    @defer.inlineCallbacks
    def test_left_group_means_fetch_again(self):
        """After jane leaves sales, her /changes says to fetch again, and /get drops sales."""
        account = account_id(self.jane.id)
        _, result, _ = yield self.one(self.as_jane, "Principal/get", {
            "accountId": account, "ids": None})
        self.assertIn(principal_id(self.sales.id), [p["id"] for p in result["list"]])
        yield self.service.directory.replace("sales", members=[])
        _, changes, _ = yield self.one(self.as_jane, "Principal/changes", {
            "accountId": account, "sinceState": result["state"]})
        self.assertEqual(changes["type"], "cannotCalculateChanges")
        _, result, _ = yield self.one(self.as_jane, "Principal/get", {
            "accountId": account, "ids": None})
        self.assertEqual([p["id"] for p in result["list"]], [principal_id(self.jane.id)])


class PatchTests(TestCase):
    """
    PatchObject rules of RFC 8620 section 5.3.
    """

    def test_overlapping_paths(self):
        """A pointer that is a prefix of another is invalidPatch, even with others between."""
        from stalwart_tw.jmap.standard import SetError, apply_patch

        for patch in ({"a": 1, "a/b": 2}, {"a": 1, "a-b": 2, "a/b": 3}):
            error = self.assertRaises(SetError, apply_patch, {"a": {"b": 0}}, patch)
            self.assertEqual(error.type, "invalidPatch")

    def test_nested_and_null(self):
        """A nested pointer sets inside an object; null removes the member."""
        from stalwart_tw.jmap.standard import apply_patch

        current = {"a": {"b": 1, "c": 2}, "d": 3}
        self.assertEqual(apply_patch(current, {"a/b": 5, "d": None}), {"a": {"b": 5, "c": 2}})
        self.assertEqual(current, {"a": {"b": 1, "c": 2}, "d": 3})
