"""
A model-based test of mail synchronisation: random Mailbox and Email
changes (imports, replies that join and merge threads, keyword toggles,
moves, destroys, mailboxes made and removed) while clients keep caches
only through /changes and /queryChanges (small maxChanges, so paging
happens), each compared after every step with a fresh /get and /query.

Seeded: a failure names its seed and step, and the same seed replays the
same run. STALWART_MODEL_SEEDS (a count) and STALWART_MODEL_STEPS make a
longer soak; the suite runs a few short ones.

The checker is itself tested: bugs injected on purpose (a change not
logged, a query change not expanded to the thread, counts not touched)
must each be caught from several seeds.
"""

import os
import random

from twisted.internet import defer

from stalwart_tw.mail import messages
from stalwart_tw.mail.query import EmailQuery
from tests.mail_support import MailTestCase, message

SEEDS = int(os.environ.get("STALWART_MODEL_SEEDS", "2"))
STEPS = int(os.environ.get("STALWART_MODEL_STEPS", "24"))
SUBJECTS = ("alpha", "beta", "gamma")
EMAIL_PROPERTIES = ["mailboxIds", "keywords", "threadId"]


class Mismatch(Exception):
    """
    A client's cache differs from the server's answer.
    """


class CachingClient:
    """
    A client that knows the account only through /changes and
    /queryChanges after its first full read.

    @param query: the Email/query arguments (filter, sort, collapseThreads)
        whose results it keeps.
    """

    def __init__(self, test, name, query, max_changes):
        self.test = test
        self.name = name
        self.query = query
        self.max_changes = max_changes
        self.objects = {"Email": {}, "Mailbox": {}, "Thread": {}}
        self.states = {}
        self.ids = []
        self.query_state = None

    def _properties(self, type_name):
        return EMAIL_PROPERTIES if type_name == "Email" else None

    @defer.inlineCallbacks
    def start(self):
        for type_name in self.objects:
            response = yield self.test.one(f"{type_name}/get", {
                "ids": None, "properties": self._properties(type_name)})
            self.objects[type_name] = {item["id"]: item for item in response["list"]}
            self.states[type_name] = response["state"]
        response = yield self.test.one("Email/query", self.query)
        self.ids, self.query_state = response["ids"], response["queryState"]

    @defer.inlineCallbacks
    def sync(self):
        for type_name in self.objects:
            yield self._sync_type(type_name)
        response = yield self.test.one("Email/queryChanges", {
            **self.query, "sinceQueryState": self.query_state, "maxChanges": 40})
        if "error" in response:
            # What a client does when the server cannot tell: read again.
            response = yield self.test.one("Email/query", self.query)
            self.ids, self.query_state = response["ids"], response["queryState"]
            return
        ids = [i for i in self.ids if i not in set(response["removed"])]
        for added in response["added"]:
            ids.insert(added["index"], added["id"])
        self.ids, self.query_state = ids, response["newQueryState"]

    @defer.inlineCallbacks
    def _sync_type(self, type_name):
        cache = self.objects[type_name]
        while True:
            response = yield self.test.one(f"{type_name}/changes", {
                "sinceState": self.states[type_name], "maxChanges": self.max_changes})
            if "error" in response:
                raise Mismatch(f"{self.name}: {type_name}/changes failed: {response['error']}")
            for object_id in response["destroyed"]:
                cache.pop(object_id, None)
            wanted = response["created"] + response["updated"]
            if wanted:
                got = yield self.test.one(f"{type_name}/get", {
                    "ids": wanted, "properties": self._properties(type_name)})
                for item in got["list"]:
                    cache[item["id"]] = item
                for object_id in got["notFound"]:
                    cache.pop(object_id, None)
            self.states[type_name] = response["newState"]
            if not response["hasMoreChanges"]:
                return

    @defer.inlineCallbacks
    def check(self):
        for type_name, cache in self.objects.items():
            response = yield self.test.one(f"{type_name}/get", {
                "ids": None, "properties": self._properties(type_name)})
            fresh = {item["id"]: item for item in response["list"]}
            if fresh != cache:
                differ = sorted(k for k in set(fresh) | set(cache) if fresh.get(k) != cache.get(k))
                raise Mismatch(
                    f"{self.name}: {type_name} cache differs at {differ[:3]}: "
                    f"cached {[cache.get(k) for k in differ[:1]]}, "
                    f"server {[fresh.get(k) for k in differ[:1]]}")
        response = yield self.test.one("Email/query", self.query)
        if response["ids"] != self.ids:
            raise Mismatch(f"{self.name}: query cache {self.ids} != server {response['ids']}")


class MailModel:
    """
    The random actions of one seeded run, on jane's account.
    """

    def __init__(self, test, seed):
        self.test = test
        self.random = random.Random(seed)
        self.sent = []  # (message id, subject) of every message imported
        self.counter = 0

    @defer.inlineCallbacks
    def state(self):
        emails = yield self.test.one("Email/get", {"ids": None, "properties": EMAIL_PROPERTIES})
        boxes = yield self.test.one("Mailbox/get", {"ids": None})
        return emails["list"], boxes["list"]

    @defer.inlineCallbacks
    def step(self):
        emails, boxes = yield self.state()
        choices = ["import"] * 4 + ["reply"] * 3
        if emails:
            choices += ["keyword"] * 3 + ["move"] * 2 + ["destroy"]
        choices += ["mailbox"]
        if any(box["role"] is None for box in boxes):
            choices += ["unmailbox"]
        action = self.random.choice(choices)
        yield getattr(self, "do_" + action)(emails, boxes)
        return action

    def _received(self):
        self.counter += 1
        day, second = divmod(self.counter, 3600)
        return f"2024-02-{day + 1:02d}T{second // 60:02d}:{second % 60:02d}:00Z"

    def _box(self, boxes):
        # Most mail lands in the Inbox, as in life, so threads meet there.
        if self.random.random() < 0.6:
            return next(box["id"] for box in boxes if box["role"] == "inbox")
        return self.random.choice(boxes)["id"]

    @defer.inlineCallbacks
    def do_import(self, emails, boxes):
        subject = self.random.choice(SUBJECTS)
        message_id = f"m{self.counter}@model"
        yield self.test.import_messages(
            [message(subject=subject, message_id=message_id)],
            mailbox=self._box(boxes), received=[self._received()])
        self.sent.append((message_id, subject))

    @defer.inlineCallbacks
    def do_reply(self, emails, boxes):
        if not self.sent:
            yield self.do_import(emails, boxes)
            return
        subject = self.random.choice(SUBJECTS)
        earlier = [mid for mid, s in self.sent if s == subject]
        # Naming two earlier messages may link two threads: a merge.
        parents = self.random.sample(earlier, min(len(earlier), self.random.choice((1, 2))))
        message_id = f"m{self.counter}@model"
        yield self.test.import_messages(
            [message(subject="Re: " + subject, message_id=message_id,
                     in_reply_to=parents[-1] if parents else None, references=parents)],
            mailbox=self._box(boxes), received=[self._received()])
        self.sent.append((message_id, subject))

    @defer.inlineCallbacks
    def do_keyword(self, emails, boxes):
        target = self.random.choice(emails)
        keyword = self.random.choice(("$seen", "$flagged"))
        value = None if keyword in target["keywords"] else True
        yield self.test.one("Email/set", {"update": {target["id"]: {f"keywords/{keyword}": value}}})

    @defer.inlineCallbacks
    def do_move(self, emails, boxes):
        target = self.random.choice(emails)
        chosen = self.random.sample(boxes, self.random.choice((1, 2)))
        yield self.test.one("Email/set", {"update": {target["id"]: {
            "mailboxIds": {box["id"]: True for box in chosen}}}})

    @defer.inlineCallbacks
    def do_destroy(self, emails, boxes):
        yield self.test.one("Email/set", {"destroy": [self.random.choice(emails)["id"]]})

    @defer.inlineCallbacks
    def do_mailbox(self, emails, boxes):
        yield self.test.one("Mailbox/set", {"create": {"k": {
            "name": f"Box {self.counter}", "parentId": None}}})
        self.counter += 1

    @defer.inlineCallbacks
    def do_unmailbox(self, emails, boxes):
        target = self.random.choice([box for box in boxes if box["role"] is None])
        yield self.test.one("Mailbox/set", {"destroy": [target["id"]],
                                            "onDestroyRemoveEmails": True})


class MailModelTests(MailTestCase):
    """
    Clients that keep caches through /changes and /queryChanges stay in
    sync with the server under random changes.
    """

    # The clients make thousands of calls a minute.
    settings_overrides = {"rate-limit-authenticated": "1000000/60"}

    @defer.inlineCallbacks
    def run_model(self, seed, steps):
        """
        @return: a description of the first mismatch, or C{None}.
        """
        inbox = (yield self.mailboxes())["Inbox"]["id"]
        clients = [
            CachingClient(self, "inbox-collapsed", {
                "filter": {"inMailbox": inbox}, "collapseThreads": True,
                "sort": [{"property": "receivedAt", "isAscending": False}]}, max_changes=2),
            CachingClient(self, "flagged-threads", {
                "sort": [{"property": "someInThreadHaveKeyword", "keyword": "$flagged",
                          "isAscending": False}, {"property": "receivedAt"}]}, max_changes=3),
        ]
        for client in clients:
            yield client.start()
        model = MailModel(self, seed)
        for step in range(steps):
            action = yield model.step()
            for client in clients:
                # The second client lets changes pile up for a few steps.
                if client is clients[1] and step % 3 and step != steps - 1:
                    continue
                try:
                    yield client.sync()
                    yield client.check()
                except Mismatch as error:
                    return f"seed {seed}, step {step} ({action}): {error}"
        return None

    @defer.inlineCallbacks
    def test_caches_stay_in_sync(self):
        """Seeded random changes: every cache equals a fresh read after every step."""
        for seed in range(SEEDS):
            if seed:
                yield self.reset_account()
            found = yield self.run_model(seed, STEPS)
            self.assertIsNone(found)

    @defer.inlineCallbacks
    def reset_account(self):
        # A fresh account for the next seed: jane's mail, emptied.
        emails = yield self.one("Email/get", {"ids": None, "properties": ["id"]})
        if emails["list"]:
            yield self.one("Email/set", {"destroy": [item["id"] for item in emails["list"]]})
        boxes = yield self.one("Mailbox/get", {"ids": None})
        extra = [box["id"] for box in boxes["list"] if box["role"] is None]
        if extra:
            yield self.one("Mailbox/set", {"destroy": extra, "onDestroyRemoveEmails": True})

    @defer.inlineCallbacks
    def caught(self, seeds=(11, 12, 13), steps=40):
        """Every seed finds the injected bug."""
        for seed in seeds:
            yield self.reset_account()
            found = yield self.run_model(seed, steps)
            self.assertIsNotNone(found, f"seed {seed} missed the injected bug")

    def test_catches_unlogged_keyword_change(self):
        """A keyword change that is not logged as an Email update is caught."""
        original = messages.set_keywords

        def unlogged(draft, account, row, wanted, current=None):
            changes = list(draft.batch.changes)
            changed = original(draft, account, row, wanted, current)
            draft.batch.changes[:] = changes + [
                change for change in draft.batch.changes[len(changes):] if change[1] != "Email"]
            return changed
        self.patch(messages, "set_keywords", unlogged)
        return self.caught()

    def test_catches_query_changes_not_expanded(self):
        """A /queryChanges that forgets the other messages of a changed thread is caught."""

        async def narrow(self, context, account, compiled, extra, changed, since):
            return changed
        self.patch(EmailQuery, "related_changes", narrow)
        return self.caught()

    def test_catches_counts_not_touched(self):
        """Mailbox counts that move without a Mailbox change are caught."""
        self.patch(messages, "touch_counts", lambda *args, **kwargs: None)
        return self.caught()
