"""
Tests of Email/query, Email/queryChanges and SearchSnippet/get (RFC 8621
sections 4.4, 4.5 and 5) over HTTP: every filter condition, every sort,
collapseThreads, and the full-text search behind the text conditions.
"""

from twisted.internet import defer

from tests.mail_support import MailTestCase, message


class EmailQueryTestCase(MailTestCase):
    """
    Five messages in three threads, in the Inbox and Archive.
    """

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        boxes = yield self.mailboxes()
        self.inbox, self.archive = boxes["Inbox"]["id"], boxes["Archive"]["id"]
        raws = [
            message(subject="Budget meeting", sender="Carol <carol@example.com>",
                    message_id="b1@x", body="The budget numbers are running late.\r\n",
                    date="Mon, 01 Jan 2024 09:00:00 +0000"),
            message(subject="Re: Budget meeting", sender="Alice <alice@example.com>",
                    message_id="b2@x", in_reply_to="b1@x", references=["b1@x"],
                    body="I will run the numbers tonight.\r\n",
                    date="Tue, 02 Jan 2024 09:00:00 +0000"),
            message(subject="Holiday photos", sender="Bob <bob@example.net>",
                    message_id="h1@x", body="Photos from the beach.\r\n",
                    date="Wed, 03 Jan 2024 09:00:00 +0000", extra=["X-Mood: happy"]),
            message(subject="Invoice 42", sender="Billing <billing@shop.example>",
                    to="Jane <jane@example.org>, Zed <zed@example.org>",
                    message_id="i1@x", body="Your invoice is attached.\r\n" + "x" * 3000,
                    date="Thu, 04 Jan 2024 09:00:00 +0000"),
            message(subject="Re: Budget meeting", sender="Carol <carol@example.com>",
                    message_id="b3@x", in_reply_to="b2@x", references=["b1@x", "b2@x"],
                    body="Thanks, the budget is approved.\r\n",
                    date="Fri, 05 Jan 2024 09:00:00 +0000"),
        ]
        received = [f"2024-01-0{day}T10:00:00Z" for day in range(1, 6)]
        self.ids = yield self.import_messages(raws, received=received)
        self.b1, self.b2, self.h1, self.i1, self.b3 = self.ids
        yield self.one("Email/set", {"update": {
            self.b1: {"keywords": {"$seen": True}},
            self.b2: {"keywords": {"$seen": True, "$flagged": True}},
            self.h1: {"mailboxIds": {self.archive: True}, "keywords": {"$seen": True}},
        }})

    @defer.inlineCallbacks
    def query(self, **arguments):
        response = yield self.one("Email/query", arguments)
        if "error" in response:
            return response
        return response["ids"]

    def newest_first(self):
        return [{"property": "receivedAt", "isAscending": False}]


class EmailFilterTests(EmailQueryTestCase):
    """
    Each FilterCondition of RFC 8621 section 4.4.1.
    """

    @defer.inlineCallbacks
    def assertMatches(self, condition, expected):
        found = yield self.query(filter=condition, sort=self.newest_first())
        self.assertEqual(found, expected, condition)

    @defer.inlineCallbacks
    def test_mailboxes(self):
        """inMailbox and inMailboxOtherThan select by membership."""
        yield self.assertMatches({"inMailbox": self.archive}, [self.h1])
        yield self.assertMatches({"inMailbox": "mzzz"}, [])
        yield self.assertMatches({"inMailboxOtherThan": [self.inbox]}, [self.h1])

    @defer.inlineCallbacks
    def test_dates_and_sizes(self):
        """before is exclusive, after inclusive; minSize inclusive, maxSize exclusive."""
        yield self.assertMatches({"before": "2024-01-02T10:00:00Z"}, [self.b1])
        yield self.assertMatches({"after": "2024-01-04T10:00:00Z"}, [self.b3, self.i1])
        yield self.assertMatches({"minSize": 3000}, [self.i1])
        yield self.assertMatches({"maxSize": 3000}, [self.b3, self.h1, self.b2, self.b1])

    @defer.inlineCallbacks
    def test_keywords(self):
        """hasKeyword, notKeyword and the three thread keyword conditions."""
        yield self.assertMatches({"hasKeyword": "$flagged"}, [self.b2])
        yield self.assertMatches({"notKeyword": "$seen"}, [self.b3, self.i1])
        yield self.assertMatches({"someInThreadHaveKeyword": "$flagged"},
                                 [self.b3, self.b2, self.b1])
        yield self.assertMatches({"allInThreadHaveKeyword": "$seen"}, [self.h1])
        yield self.assertMatches({"noneInThreadHaveKeyword": "$seen"}, [self.i1])

    @defer.inlineCallbacks
    def test_text(self):
        """Text conditions match whole words, stemmed, per field; phrases in order."""
        yield self.assertMatches({"text": "budget"}, [self.b3, self.b2, self.b1])
        yield self.assertMatches({"body": "run"}, [self.b2, self.b1])
        yield self.assertMatches({"subject": "invoice"}, [self.i1])
        yield self.assertMatches({"from": "carol"}, [self.b3, self.b1])
        yield self.assertMatches({"to": "zed"}, [self.i1])
        yield self.assertMatches({"body": '"budget is approved"'}, [self.b3])
        yield self.assertMatches({"body": '"approved budget"'}, [])
        yield self.assertMatches({"text": "budget approved"}, [self.b3])

    @defer.inlineCallbacks
    def test_header(self):
        """header matches a field's presence, or text in its value."""
        yield self.assertMatches({"header": ["X-Mood"]}, [self.h1])
        yield self.assertMatches({"header": ["x-mood", "HAPPY"]}, [self.h1])
        yield self.assertMatches({"header": ["X-Mood", "sad"]}, [])

    @defer.inlineCallbacks
    def test_operators(self):
        """AND, OR and NOT combine conditions."""
        yield self.assertMatches({"operator": "NOT", "conditions": [
            {"inMailbox": self.inbox}]}, [self.h1])
        yield self.assertMatches({"operator": "OR", "conditions": [
            {"hasKeyword": "$flagged"}, {"subject": "holiday"}]}, [self.h1, self.b2])

    @defer.inlineCallbacks
    def test_wrong_types(self):
        """A filter value of the wrong type is invalidArguments; an unknown property unsupportedFilter."""
        for condition in ({"inMailbox": 3}, {"before": "yesterday"}, {"minSize": -1},
                          {"hasKeyword": "two words"}, {"hasAttachment": "no"},
                          {"header": []}, {"text": 7}, {"inMailboxOtherThan": "m1"}):
            response = yield self.query(filter=condition)
            self.assertEqual(response["error"]["type"], "invalidArguments", condition)
        response = yield self.query(filter={"colour": "red"})
        self.assertEqual(response["error"]["type"], "unsupportedFilter")


class EmailSortTests(EmailQueryTestCase):
    """
    Each sort property of RFC 8621 section 4.4.2 and collapseThreads.
    """

    @defer.inlineCallbacks
    def test_sorts(self):
        """receivedAt, sentAt, size, from, to and subject sort as the RFC says."""
        self.assertEqual((yield self.query(sort=[{"property": "receivedAt"}])), self.ids)
        self.assertEqual((yield self.query(sort=[{"property": "sentAt", "isAscending": False}])),
                         list(reversed(self.ids)))
        by_size = yield self.query(sort=[{"property": "size", "isAscending": False}])
        self.assertEqual(by_size[0], self.i1)
        by_from = yield self.query(sort=[{"property": "from"}, {"property": "receivedAt"}])
        self.assertEqual(by_from, [self.b2, self.i1, self.h1, self.b1, self.b3])
        by_subject = yield self.query(sort=[{"property": "subject"}, {"property": "receivedAt"}])
        self.assertEqual(by_subject, [self.b1, self.b2, self.b3, self.h1, self.i1])
        # "Jane" (a name) sorts before "jane@example.org" (an address alone).
        by_to = yield self.query(sort=[{"property": "to"}, {"property": "receivedAt"}])
        self.assertEqual(by_to[0], self.i1)

    @defer.inlineCallbacks
    def test_keyword_sorts(self):
        """hasKeyword and the thread keyword sorts need a keyword and order by it."""
        flagged_first = yield self.query(sort=[
            {"property": "someInThreadHaveKeyword", "keyword": "$flagged", "isAscending": False},
            {"property": "receivedAt"}])
        self.assertEqual(flagged_first, [self.b1, self.b2, self.b3, self.h1, self.i1])
        seen_last = yield self.query(sort=[
            {"property": "hasKeyword", "keyword": "$seen"}, {"property": "receivedAt"}])
        self.assertEqual(seen_last, [self.i1, self.b3, self.b1, self.b2, self.h1])
        response = yield self.query(sort=[{"property": "hasKeyword"}])
        self.assertEqual(response["error"]["type"], "invalidArguments")

    @defer.inlineCallbacks
    def test_collapse_threads(self):
        """collapseThreads keeps the first message of each thread in the sort order."""
        collapsed = yield self.one("Email/query", {
            "sort": self.newest_first(), "collapseThreads": True, "calculateTotal": True})
        self.assertEqual(collapsed["ids"], [self.b3, self.i1, self.h1])
        self.assertEqual(collapsed["total"], 3)
        oldest = yield self.query(sort=[{"property": "receivedAt"}], collapseThreads=True)
        self.assertEqual(oldest, [self.b1, self.h1, self.i1])

    @defer.inlineCallbacks
    def test_window(self):
        """position, limit and anchor window the results."""
        response = yield self.one("Email/query", {
            "filter": {"inMailbox": self.inbox}, "sort": self.newest_first(),
            "position": 1, "limit": 2, "calculateTotal": True})
        self.assertEqual((response["ids"], response["total"]), ([self.i1, self.b2], 4))
        response = yield self.one("Email/query", {
            "sort": self.newest_first(), "position": -2, "limit": 1, "collapseThreads": True,
            "calculateTotal": True})
        self.assertEqual((response["position"], response["ids"], response["total"]),
                         (1, [self.i1], 3))
        response = yield self.one("Email/query", {"position": 9, "limit": 5})
        self.assertEqual((response["position"], response["ids"]), (9, []))
        response = yield self.one("Email/query", {
            "sort": self.newest_first(), "anchor": self.h1, "anchorOffset": -1, "limit": 2})
        self.assertEqual(response["ids"], [self.i1, self.h1])

    @defer.inlineCallbacks
    def test_text_windows(self):
        """
        A window of a text query holds the same messages however many of
        the matches it covers: the matches read from the full-text index
        when they all fit, the sort order walked when they do not.
        """
        newest = [self.b3, self.b2, self.b1]
        windows = [(0, 50, newest), (0, 2, newest[:2]), (1, 2, newest[1:]), (2, 1, newest[2:]),
                   (-1, 5, newest[2:]), (-2, 1, newest[1:2]), (3, 5, [])]
        for condition in ({"text": "budget"}, {"inMailbox": self.inbox, "text": "budget"},
                          {"operator": "AND", "conditions": [{"subject": "budget"}, {"text": "meeting"}]}):
            for position, limit, expected in windows:
                response = yield self.one("Email/query", {
                    "filter": condition, "sort": self.newest_first(), "position": position,
                    "limit": limit, "calculateTotal": True})
                self.assertEqual((response["ids"], response["total"]), (expected, 3),
                                 (condition, position, limit))
        unflagged = {"operator": "AND", "conditions": [{"text": "budget"}, {"notKeyword": "$flagged"}]}
        self.assertEqual((yield self.query(filter=unflagged, sort=self.newest_first())), [self.b3, self.b1])
        either = {"operator": "OR", "conditions": [{"text": "budget"}, {"text": "photos"}]}
        self.assertEqual((yield self.query(filter=either, sort=self.newest_first())), [self.b3, self.h1, self.b2, self.b1])
        not_budget = {"operator": "NOT", "conditions": [{"text": "budget"}]}
        self.assertEqual((yield self.query(filter=not_budget, sort=self.newest_first())), [self.i1, self.h1])
        collapsed = yield self.one("Email/query", {
            "filter": {"text": "budget"}, "sort": self.newest_first(), "collapseThreads": True,
            "calculateTotal": True})
        self.assertEqual((collapsed["ids"], collapsed["total"]), ([self.b3], 1))
        oldest = yield self.query(filter={"text": "budget"}, sort=[{"property": "receivedAt"}],
                                  limit=2)
        self.assertEqual(oldest, [self.b1, self.b2])


class EmailQueryChangesTests(EmailQueryTestCase):
    """
    Email/queryChanges, exact with collapseThreads.
    """

    @defer.inlineCallbacks
    def replay(self, arguments, change):
        first = yield self.one("Email/query", arguments)
        yield change()
        now = yield self.one("Email/query", arguments)
        delta = yield self.one("Email/queryChanges", {
            **{k: v for k, v in arguments.items() if k not in ("position", "limit")},
            "sinceQueryState": first["queryState"]})
        cached = [i for i in first["ids"] if i not in delta["removed"]]
        for added in delta["added"]:
            cached.insert(added["index"], added["id"])
        self.assertEqual(cached, now["ids"])
        return delta

    @defer.inlineCallbacks
    def test_new_message_displaces_thread(self):
        """A new reply takes its thread's place; the old representative is removed."""
        arguments = {"sort": self.newest_first(), "collapseThreads": True}

        @defer.inlineCallbacks
        def change():
            self.b4 = (yield self.import_messages([message(
                subject="Re: Budget meeting", message_id="b4@x", in_reply_to="b3@x")],
                received=["2024-01-06T10:00:00Z"]))[0]
        delta = yield self.replay(arguments, change)
        self.assertIn(self.b3, delta["removed"])
        self.assertEqual(delta["added"][0], {"id": self.b4, "index": 0})

    @defer.inlineCallbacks
    def test_keyword_sort_moves_thread_members(self):
        """Flagging one message moves its whole thread in a thread-keyword sort."""
        arguments = {"sort": [
            {"property": "someInThreadHaveKeyword", "keyword": "$flagged", "isAscending": False},
            {"property": "receivedAt"}]}
        yield self.replay(arguments, lambda: self.one("Email/set", {
            "update": {self.b2: {"keywords/$flagged": None}, self.h1: {"keywords/$flagged": True}}}))

    @defer.inlineCallbacks
    def test_destroy_and_max_changes(self):
        """A destroyed message is removed; too many changes for maxChanges is tooManyChanges."""
        arguments = {"filter": {"inMailbox": self.inbox}, "sort": self.newest_first()}
        first = yield self.one("Email/query", arguments)
        delta = yield self.replay(arguments, lambda: self.one("Email/set", {"destroy": [self.i1]}))
        self.assertIn(self.i1, delta["removed"])
        response = yield self.one("Email/queryChanges", {
            **arguments, "sinceQueryState": first["queryState"], "maxChanges": 0})
        self.assertEqual(response["error"]["type"], "tooManyChanges")


class SearchSnippetTests(EmailQueryTestCase):
    """
    SearchSnippet/get.
    """

    @defer.inlineCallbacks
    def test_marks(self):
        """Matched words are marked in subject and preview; unmatched fields are null."""
        response = yield self.one("SearchSnippet/get", {
            "filter": {"text": "budget"}, "emailIds": [self.b1, self.h1, "enope"]})
        snippets = {item["emailId"]: item for item in response["list"]}
        self.assertEqual(snippets[self.b1]["subject"], "<mark>Budget</mark> meeting")
        self.assertIn("<mark>budget</mark>", snippets[self.b1]["preview"])
        self.assertIsNone(snippets[self.h1]["subject"])
        self.assertEqual(response["notFound"], ["enope"])

    @defer.inlineCallbacks
    def test_bad_filter(self):
        """A filter Email/query would refuse is refused here the same way."""
        response = yield self.one("SearchSnippet/get", {
            "filter": {"minSize": "big"}, "emailIds": [self.b1]})
        self.assertEqual(response["error"]["type"], "invalidArguments")
