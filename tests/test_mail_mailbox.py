"""
Tests of Mailbox (RFC 8621 section 2) over HTTP: /get, /set, /changes,
/query and /queryChanges, the standard mailboxes, and every SetError.
"""

from twisted.internet import defer

from stalwart_tw.jmap.session import account_id
from tests.mail_support import MailTestCase


class MailboxGetTests(MailTestCase):
    """
    Mailbox/get and the standard mailboxes.
    """

    @defer.inlineCallbacks
    def test_new_account_has_standard_mailboxes(self):
        """A new account holds Inbox, Drafts, Sent, Archive, Junk and Trash with their roles."""
        found = yield self.mailboxes()
        self.assertEqual(
            {name: box["role"] for name, box in found.items()},
            {"Inbox": "inbox", "Drafts": "drafts", "Sent": "sent", "Archive": "archive",
             "Junk": "junk", "Trash": "trash"},
        )
        inbox = found["Inbox"]
        self.assertEqual(inbox["parentId"], None)
        self.assertEqual(
            (inbox["totalEmails"], inbox["unreadEmails"], inbox["totalThreads"],
             inbox["unreadThreads"]), (0, 0, 0, 0))
        self.assertTrue(inbox["isSubscribed"])
        self.assertTrue(inbox["myRights"]["mayAddItems"])
        self.assertFalse(inbox["myRights"]["mayDelete"])
        self.assertTrue(found["Trash"]["myRights"]["mayDelete"])

    @defer.inlineCallbacks
    def test_ids_and_properties(self):
        """Asked ids come back with just the properties asked for; unknown ids are notFound."""
        found = yield self.mailboxes()
        inbox = found["Inbox"]["id"]
        response = yield self.one(
            "Mailbox/get", {"ids": [inbox, "mzz", "garbage"], "properties": ["name"]})
        self.assertEqual(response["list"], [{"id": inbox, "name": "Inbox"}])
        self.assertEqual(response["notFound"], ["mzz", "garbage"])

    @defer.inlineCallbacks
    def test_unknown_property(self):
        """A property Mailbox does not have is invalidArguments."""
        response = yield self.one("Mailbox/get", {"ids": None, "properties": ["colour"]})
        self.assertEqual(response["error"]["type"], "invalidArguments")

    @defer.inlineCallbacks
    def test_group_account_is_shared(self):
        """Jane sees the group's mailboxes; bob, not a member, gets accountNotFound."""
        sales = account_id(self.sales.id)
        response = yield self.one("Mailbox/get", {"accountId": sales, "ids": None})
        self.assertEqual(len(response["list"]), 6)
        response = yield self.one("Mailbox/get", {"accountId": sales, "ids": None},
                                  who=self.as_bob)
        self.assertEqual(response["error"]["type"], "accountNotFound")

    @defer.inlineCallbacks
    def test_subscription_is_per_user(self):
        """Subscribing in a shared account changes the subscriber's view alone."""
        sales = account_id(self.sales.id)
        got = yield self.one("Mailbox/get", {"accountId": sales, "ids": None})
        target = got["list"][0]["id"]
        self.assertFalse(got["list"][0]["isSubscribed"])
        response = yield self.one("Mailbox/set", {
            "accountId": sales, "update": {target: {"isSubscribed": True}}})
        self.assertEqual(response["updated"], {target: None})
        got = yield self.one("Mailbox/get", {"accountId": sales, "ids": [target]})
        self.assertTrue(got["list"][0]["isSubscribed"])


class MailboxSetTests(MailTestCase):
    """
    Mailbox/set: creates, updates, destroys and their SetErrors.
    """

    @defer.inlineCallbacks
    def test_create_returns_defaults(self):
        """A created mailbox reports its id, counts, rights and the defaults it got."""
        response = yield self.one("Mailbox/set", {"create": {"k": {"name": "Projects"}}})
        created = response["created"]["k"]
        self.assertEqual(created["parentId"], None)
        self.assertEqual(created["role"], None)
        self.assertEqual(created["sortOrder"], 0)
        self.assertTrue(created["isSubscribed"])
        self.assertEqual(created["totalEmails"], 0)
        self.assertTrue(created["myRights"]["mayDelete"])
        self.assertNotEqual(response["oldState"], response["newState"])
        found = yield self.mailboxes()
        self.assertEqual(found["Projects"]["id"], created["id"])

    @defer.inlineCallbacks
    def test_child_by_creation_id(self):
        """A child may name a parent created earlier in the same call by #creationId."""
        response = yield self.one("Mailbox/set", {"create": {
            "p": {"name": "Work"}, "c": {"name": "Reports", "parentId": "#p"}}})
        self.assertIsNone(response["notCreated"])
        found = yield self.mailboxes()
        self.assertEqual(found["Reports"]["parentId"], found["Work"]["id"])

    @defer.inlineCallbacks
    def test_bad_properties(self):
        """Each invalid value is invalidProperties naming the property."""
        found = yield self.mailboxes()
        cases = {
            "empty": ({"name": ""}, ["name"]),
            "control": ({"name": "a\x07b"}, ["name"]),
            "long": ({"name": "x" * 256}, ["name"]),
            "role": ({"name": "A", "role": "inbox"}, ["role"]),
            "norole": ({"name": "B", "role": "nonsense"}, ["role"]),
            "order": ({"name": "C", "sortOrder": -1}, ["sortOrder"]),
            "huge": ({"name": "D", "sortOrder": 2**31}, ["sortOrder"]),
            "parent": ({"name": "E", "parentId": "mzzz"}, ["parentId"]),
            "sibling": ({"name": "inbox"}, ["name"]),
            "server": ({"name": "F", "totalEmails": 3}, ["totalEmails"]),
            "unknown": ({"name": "G", "colour": "red"}, ["colour"]),
            "subscribed": ({"name": "H", "isSubscribed": "yes"}, ["isSubscribed"]),
        }
        response = yield self.one(
            "Mailbox/set", {"create": {key: value for key, (value, _) in cases.items()}})
        self.assertIsNone(response["created"])
        for key, (_, properties) in cases.items():
            error = response["notCreated"][key]
            self.assertEqual((error["type"], error["properties"]),
                             ("invalidProperties", properties), key)
        self.assertEqual(len((yield self.mailboxes())), len(found))

    @defer.inlineCallbacks
    def test_role_set_twice_in_one_call(self):
        """Two creates claiming one role: the second is refused."""
        response = yield self.one("Mailbox/set", {"create": {
            "a": {"name": "Flagged 1", "role": "flagged"},
            "b": {"name": "Flagged 2", "role": "flagged"}}})
        self.assertIn("a", response["created"])
        self.assertEqual(response["notCreated"]["b"]["properties"], ["role"])

    @defer.inlineCallbacks
    def test_same_name_under_different_parents(self):
        """Sibling names must differ; cousins may share one."""
        work = yield self.create_mailbox(name="Work")
        response = yield self.one("Mailbox/set", {"create": {
            "a": {"name": "Inbox", "parentId": work},
            "b": {"name": "INBOX", "parentId": work}}})
        self.assertIn("a", response["created"])
        self.assertEqual(response["notCreated"]["b"]["type"], "invalidProperties")

    @defer.inlineCallbacks
    def test_update_rename_and_move(self):
        """A rename and a move are updates; the old state moves to a new one."""
        work = yield self.create_mailbox(name="Work")
        old = yield self.create_mailbox(name="Old")
        response = yield self.one("Mailbox/set", {"update": {
            old: {"name": "Archive 2020", "parentId": work, "sortOrder": 7}}})
        self.assertEqual(response["updated"], {old: None})
        found = yield self.mailboxes()
        self.assertEqual(found["Archive 2020"]["parentId"], work)
        self.assertEqual(found["Archive 2020"]["sortOrder"], 7)

    @defer.inlineCallbacks
    def test_no_loops(self):
        """A mailbox cannot become its own ancestor."""
        top = yield self.create_mailbox(name="Top")
        middle = yield self.create_mailbox(name="Middle", parentId=top)
        bottom = yield self.create_mailbox(name="Bottom", parentId=middle)
        response = yield self.one("Mailbox/set", {"update": {
            top: {"parentId": bottom}, middle: {"parentId": middle}}})
        for mailbox in (top, middle):
            error = response["notUpdated"][mailbox]
            self.assertEqual((error["type"], error["properties"]),
                             ("invalidProperties", ["parentId"]))

    @defer.inlineCallbacks
    def test_depth_limit(self):
        """No mailbox nests deeper than mailbox-max-depth, made or moved."""
        parent = None
        for level in range(10):
            parent = yield self.create_mailbox(name=f"L{level}", parentId=parent)
        response = yield self.one("Mailbox/set", {"create": {
            "deep": {"name": "L10", "parentId": parent}}})
        self.assertEqual(response["notCreated"]["deep"]["properties"], ["parentId"])
        # Moving a two-level tree under the ninth level would make eleven.
        other = yield self.create_mailbox(name="Other")
        yield self.create_mailbox(name="Child", parentId=other)
        found = yield self.mailboxes()
        response = yield self.one("Mailbox/set", {"update": {
            other: {"parentId": found["L8"]["id"]}}})
        self.assertEqual(response["notUpdated"][other]["properties"], ["parentId"])

    @defer.inlineCallbacks
    def test_server_set_in_patch(self):
        """A patch may repeat a server-set value but not change it."""
        found = yield self.mailboxes()
        inbox = found["Inbox"]
        response = yield self.one("Mailbox/set", {"update": {
            inbox["id"]: {"totalEmails": 0, "sortOrder": 9}}})
        self.assertEqual(response["updated"], {inbox["id"]: None})
        response = yield self.one("Mailbox/set", {"update": {
            inbox["id"]: {"unreadEmails": 5}}})
        self.assertEqual(response["notUpdated"][inbox["id"]]["properties"], ["unreadEmails"])

    @defer.inlineCallbacks
    def test_invalid_patch(self):
        """A patch that is no object, or reaches into a missing member, is invalidPatch."""
        found = yield self.mailboxes()
        inbox = found["Inbox"]["id"]
        response = yield self.one("Mailbox/set", {"update": {
            inbox: {"myRights/nothing/deeper": True}}})
        self.assertEqual(response["notUpdated"][inbox]["type"], "invalidPatch")

    @defer.inlineCallbacks
    def test_null_for_required(self):
        """Patching name or sortOrder to null is invalidProperties."""
        found = yield self.mailboxes()
        junk = found["Junk"]["id"]
        response = yield self.one("Mailbox/set", {"update": {junk: {"name": None}}})
        self.assertEqual(response["notUpdated"][junk]["properties"], ["name"])

    @defer.inlineCallbacks
    def test_destroy(self):
        """Destroying removes the mailbox; the inbox and parents are refused."""
        found = yield self.mailboxes()
        work = yield self.create_mailbox(name="Work")
        child = yield self.create_mailbox(name="Child", parentId=work)
        response = yield self.one("Mailbox/set", {
            "destroy": [found["Inbox"]["id"], work, "mnope"]})
        self.assertEqual(response["notDestroyed"][found["Inbox"]["id"]]["type"], "forbidden")
        self.assertEqual(response["notDestroyed"][work]["type"], "mailboxHasChild")
        self.assertEqual(response["notDestroyed"]["mnope"]["type"], "notFound")
        response = yield self.one("Mailbox/set", {"destroy": [child, work]})
        self.assertEqual(response["destroyed"], [child, work])
        self.assertNotIn("Work", (yield self.mailboxes()))

    @defer.inlineCallbacks
    def test_destroyed_roles_stay_gone(self):
        """An account whose standard mailbox was destroyed does not get it back."""
        found = yield self.mailboxes()
        yield self.one("Mailbox/set", {"destroy": [found["Archive"]["id"]]})
        self.assertNotIn("Archive", (yield self.mailboxes()))

    @defer.inlineCallbacks
    def test_too_many_mailboxes(self):
        """Past mailbox-max-total a create is overQuota."""
        limit = self.service.settings.mailbox_max_total
        creates = {f"k{n}": {"name": f"Box {n}"} for n in range(limit - 6)}
        for start in range(0, len(creates), 400):
            chunk = dict(list(creates.items())[start:start + 400])
            response = yield self.one("Mailbox/set", {"create": chunk})
            self.assertIsNone(response["notCreated"])
        response = yield self.one("Mailbox/set", {"create": {"last": {"name": "One more"}}})
        self.assertEqual(response["notCreated"]["last"]["type"], "overQuota")

    @defer.inlineCallbacks
    def test_if_in_state(self):
        """A stale ifInState is stateMismatch and changes nothing."""
        response = yield self.one("Mailbox/set", {"create": {"k": {"name": "A"}}})
        stale = response["oldState"]
        response = yield self.one("Mailbox/set", {
            "ifInState": stale, "create": {"k": {"name": "B"}}})
        self.assertEqual(response["error"]["type"], "stateMismatch")
        self.assertNotIn("B", (yield self.mailboxes()))

    @defer.inlineCallbacks
    def test_bad_destroy_argument(self):
        """onDestroyRemoveEmails must be a boolean."""
        response = yield self.one("Mailbox/set", {"onDestroyRemoveEmails": "yes"})
        self.assertEqual(response["error"]["type"], "invalidArguments")


class MailboxChangesTests(MailTestCase):
    """
    Mailbox/changes.
    """

    @defer.inlineCallbacks
    def test_changes(self):
        """Creates, updates and destroys since a state come back by kind, paged by maxChanges."""
        start = (yield self.one("Mailbox/get", {"ids": []}))["state"]
        a = yield self.create_mailbox(name="A")
        b = yield self.create_mailbox(name="B")
        yield self.one("Mailbox/set", {"update": {a: {"name": "A2"}}, "destroy": [b]})
        response = yield self.one("Mailbox/changes", {"sinceState": start})
        self.assertEqual(response["created"], [a])
        self.assertEqual(response["updated"], [])
        self.assertEqual(response["destroyed"], [])
        self.assertIsNone(response["updatedProperties"])
        self.assertFalse(response["hasMoreChanges"])
        paged = yield self.one("Mailbox/changes", {"sinceState": start, "maxChanges": 1})
        self.assertTrue(paged["hasMoreChanges"])
        self.assertEqual(paged["created"], [a])

    @defer.inlineCallbacks
    def test_bad_state(self):
        """A state this server never gave is cannotCalculateChanges."""
        response = yield self.one("Mailbox/changes", {"sinceState": "nonsense"})
        self.assertEqual(response["error"]["type"], "cannotCalculateChanges")


class MailboxQueryTests(MailTestCase):
    """
    Mailbox/query and /queryChanges, with sortAsTree and filterAsTree.
    """

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.work = yield self.create_mailbox(name="Work", sortOrder=10)
        self.beta = yield self.create_mailbox(name="beta", parentId=self.work)
        self.alpha = yield self.create_mailbox(name="Alpha", parentId=self.work,
                                               isSubscribed=False)
        self.deep = yield self.create_mailbox(name="Deep", parentId=self.alpha)
        self.found = yield self.mailboxes()

    def ids(self, *names):
        return [self.found[name]["id"] for name in names]

    @defer.inlineCallbacks
    def query(self, **arguments):
        response = yield self.one("Mailbox/query", arguments)
        return response.get("ids", response)

    @defer.inlineCallbacks
    def test_filters(self):
        """Each FilterCondition property selects what the RFC says."""
        self.assertEqual((yield self.query(filter={"parentId": self.work},
                                           sort=[{"property": "name"}])),
                         self.ids("Alpha", "beta"))
        top = yield self.query(filter={"parentId": None, "hasAnyRole": False})
        self.assertEqual(top, self.ids("Work"))
        self.assertEqual((yield self.query(filter={"role": "trash"})), self.ids("Trash"))
        self.assertEqual(len((yield self.query(filter={"hasAnyRole": True}))), 6)
        self.assertEqual((yield self.query(filter={"name": "EP"})), self.ids("Deep"))
        unsubscribed = yield self.query(filter={"isSubscribed": False})
        self.assertEqual(unsubscribed, self.ids("Alpha"))
        either = yield self.query(filter={"operator": "OR", "conditions": [
            {"role": "inbox"}, {"name": "deep"}]}, sort=[{"property": "name"}])
        self.assertEqual(either, self.ids("Deep", "Inbox"))

    @defer.inlineCallbacks
    def test_wrong_filter_types(self):
        """A filter value of the wrong type is invalidArguments; an unknown one unsupportedFilter."""
        for condition in ({"hasAnyRole": "yes"}, {"name": 3}, {"parentId": 7}):
            response = yield self.query(filter=condition)
            self.assertEqual(response["error"]["type"], "invalidArguments", condition)
        response = yield self.query(filter={"colour": "red"})
        self.assertEqual(response["error"]["type"], "unsupportedFilter")
        response = yield self.query(sort=[{"property": "totalEmails"}])
        self.assertEqual(response["error"]["type"], "unsupportedSort")

    @defer.inlineCallbacks
    def test_sorts(self):
        """sortOrder then name, ascending or descending."""
        ordered = yield self.query(sort=[{"property": "sortOrder"}, {"property": "name"}])
        self.assertEqual(ordered, self.ids(
            "Alpha", "beta", "Deep", "Inbox", "Drafts", "Sent", "Archive", "Junk", "Trash",
            "Work"))
        by_name = yield self.query(sort=[{"property": "name", "isAscending": False}])
        self.assertEqual(by_name[:3], self.ids("Work", "Trash", "Sent"))

    @defer.inlineCallbacks
    def test_sort_as_tree(self):
        """With sortAsTree a parent comes before its children, siblings in sort order."""
        ordered = yield self.query(sortAsTree=True, sort=[{"property": "name"}],
                                   filter={"hasAnyRole": False})
        self.assertEqual(ordered, self.ids("Work", "Alpha", "Deep", "beta"))

    @defer.inlineCallbacks
    def test_filter_as_tree(self):
        """With filterAsTree a mailbox whose ancestor does not match is left out."""
        subscribed = yield self.query(filter={"isSubscribed": True, "hasAnyRole": False},
                                      filterAsTree=True, sortAsTree=True,
                                      sort=[{"property": "name"}])
        self.assertEqual(subscribed, self.ids("Work", "beta"))

    @defer.inlineCallbacks
    def test_query_changes(self):
        """A rename is removed and added back at its new index."""
        first = yield self.one("Mailbox/query", {"sort": [{"property": "name"}],
                                                 "filter": {"parentId": self.work}})
        yield self.one("Mailbox/set", {"update": {self.alpha: {"name": "zulu"}}})
        response = yield self.one("Mailbox/queryChanges", {
            "sort": [{"property": "name"}], "filter": {"parentId": self.work},
            "sinceQueryState": first["queryState"]})
        self.assertEqual(response["removed"], [self.alpha])
        self.assertEqual(response["added"], [{"id": self.alpha, "index": 1}])


class MailboxTreeChangesTests(MailTestCase):
    """
    Mailbox/queryChanges stays exact when a change moves or hides descendants.
    """

    settings_overrides = {}

    @defer.inlineCallbacks
    def replay(self, arguments, change):
        first = yield self.one("Mailbox/query", arguments)
        yield change()
        now = yield self.one("Mailbox/query", arguments)
        delta = yield self.one("Mailbox/queryChanges", {
            **arguments, "sinceQueryState": first["queryState"]})
        cached = [i for i in first["ids"] if i not in delta["removed"]]
        for added in delta["added"]:
            cached.insert(added["index"], added["id"])
        self.assertEqual(cached, now["ids"])

    @defer.inlineCallbacks
    def test_sort_as_tree(self):
        """A parent moved in the sort takes its children with it."""
        a = yield self.create_mailbox(name="A", sortOrder=10)
        yield self.create_mailbox(name="A1", parentId=a)
        yield self.create_mailbox(name="B", sortOrder=20)
        yield self.replay(
            {"sortAsTree": True, "filter": {"hasAnyRole": False},
             "sort": [{"property": "sortOrder"}, {"property": "name"}]},
            lambda: self.one("Mailbox/set", {"update": {a: {"sortOrder": 30}}}))

    @defer.inlineCallbacks
    def test_filter_as_tree(self):
        """A parent that stops matching hides its children."""
        a = yield self.create_mailbox(name="Projects")
        yield self.create_mailbox(name="Project X", parentId=a)
        yield self.replay(
            {"filterAsTree": True, "filter": {"name": "project"}, "sort": [{"property": "name"}]},
            lambda: self.one("Mailbox/set", {"update": {a: {"name": "Old"}}}))

    @defer.inlineCallbacks
    def test_null_patch_is_the_default(self):
        """Patching sortOrder to null sets it back to 0 (RFC 8620 section 5.3)."""
        a = yield self.create_mailbox(name="A", sortOrder=10)
        response = yield self.one("Mailbox/set", {"update": {a: {"sortOrder": None}}})
        self.assertEqual(response["updated"], {a: None})
        self.assertEqual((yield self.mailboxes())["A"]["sortOrder"], 0)
