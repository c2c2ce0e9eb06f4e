"""
Tests of Email (RFC 8621 section 4) over HTTP: /import, /get, /set,
/changes, /copy, /parse; Thread/get and threading; the Mailbox counts
that follow every change.
"""

from twisted.internet import defer

from stalwart_tw.jmap.session import account_id
from tests.mail_support import MailTestCase, message


class EmailImportGetTests(MailTestCase):
    """
    Email/import and Email/get.
    """

    settings_overrides = {"mail-import-max-items": "6"}

    @defer.inlineCallbacks
    def test_import_and_get(self):
        """An imported message shows its metadata and parsed headers."""
        raw = message(subject="Lunch?", message_id="a1@example.com")
        [email] = yield self.import_messages([raw], keywords={"$Seen": True},
                                             received=["2024-01-02T10:00:00Z"])
        response = yield self.one("Email/get", {"ids": [email]})
        [got] = response["list"]
        self.assertEqual(got["subject"], "Lunch?")
        self.assertEqual(got["from"], [{"name": "Alice", "email": "alice@example.com"}])
        self.assertEqual(got["to"], [{"name": None, "email": "jane@example.org"}])
        self.assertEqual(got["messageId"], ["a1@example.com"])
        self.assertEqual(got["keywords"], {"$seen": True})
        self.assertEqual(got["receivedAt"], "2024-01-02T10:00:00Z")
        self.assertEqual(got["sentAt"], "2024-01-02T03:04:05+01:00")
        self.assertEqual(got["size"], len(raw))
        self.assertEqual(got["preview"], "Hello Jane, how are you?")
        self.assertFalse(got["hasAttachment"])
        self.assertEqual(len(got["textBody"]), 1)
        self.assertEqual(got["bodyValues"], {})
        inbox = (yield self.mailboxes())["Inbox"]
        self.assertEqual(got["mailboxIds"], {inbox["id"]: True})

    @defer.inlineCallbacks
    def test_body_values_and_headers(self):
        """fetchTextBodyValues, maxBodyValueBytes and header:* forms come back as asked."""
        [email] = yield self.import_messages([message(extra=["X-Tag: one", "X-Tag: two"])])
        response = yield self.one("Email/get", {
            "ids": [email], "fetchTextBodyValues": True, "maxBodyValueBytes": 5,
            "properties": ["bodyValues", "header:X-Tag:all", "header:x-tag",
                           "header:Subject:asText", "headers"]})
        [got] = response["list"]
        self.assertEqual(got["bodyValues"]["1"],
                         {"value": "Hello", "isEncodingProblem": False, "isTruncated": True})
        self.assertEqual(got["header:X-Tag:all"], [" one", " two"])
        self.assertEqual(got["header:x-tag"], " two")
        self.assertEqual(got["header:Subject:asText"], "Hello")
        self.assertIn({"name": "Subject", "value": " Hello"}, got["headers"])

    @defer.inlineCallbacks
    def test_forbidden_header_form(self):
        """A header form the RFC forbids for the field is invalidArguments."""
        [email] = yield self.import_messages([message()])
        response = yield self.one("Email/get", {"ids": [email], "properties": ["header:From:asDate"]})
        self.assertEqual(response["error"]["type"], "invalidArguments")
        response = yield self.one("Email/get", {"ids": [email], "bodyProperties": ["colour"]})
        self.assertEqual(response["error"]["type"], "invalidArguments")

    @defer.inlineCallbacks
    def test_import_errors(self):
        """Unknown blobs, mailboxes and keywords, and garbage, are refused one by one."""
        inbox = (yield self.mailboxes())["Inbox"]["id"]
        good = yield self.upload(message())
        garbage = yield self.upload(b"\x00\x01\x02 not a message at all \xff\xfe")
        response = yield self.one("Email/import", {"emails": {
            "noblob": {"blobId": "f" * 64, "mailboxIds": {inbox: True}},
            "nobox": {"blobId": good, "mailboxIds": {"mzzz": True}},
            "empty": {"blobId": good, "mailboxIds": {}},
            "keyword": {"blobId": good, "mailboxIds": {inbox: True}, "keywords": {"bad word": True}},
            "date": {"blobId": good, "mailboxIds": {inbox: True}, "receivedAt": "yesterday"},
            "garbage": {"blobId": garbage, "mailboxIds": {inbox: True}},
        }})
        self.assertIn("notCreated", response, response)
        refused = response["notCreated"]
        self.assertIsNone(response["created"])
        self.assertEqual(refused["noblob"]["type"], "blobNotFound")
        self.assertEqual(refused["nobox"]["properties"], ["mailboxIds"])
        self.assertEqual(refused["empty"]["properties"], ["mailboxIds"])
        self.assertEqual(refused["keyword"]["properties"], ["keywords"])
        self.assertEqual(refused["date"]["properties"], ["receivedAt"])
        self.assertEqual(refused["garbage"]["type"], "invalidEmail")
        self.assertEqual(response["oldState"], response["newState"])

    @defer.inlineCallbacks
    def test_import_limit(self):
        """More than mail-import-max-items emails in one import is requestTooLarge."""
        inbox = (yield self.mailboxes())["Inbox"]["id"]
        blob = yield self.upload(message())
        response = yield self.one("Email/import", {"emails": {
            f"k{n}": {"blobId": blob, "mailboxIds": {inbox: True}} for n in range(7)}})
        self.assertEqual(response["error"]["type"], "requestTooLarge")

    @defer.inlineCallbacks
    def test_blob_download(self):
        """The raw message and each body part download by their blob ids."""
        raw = message(body="Just the text.\r\n")
        [email] = yield self.import_messages([raw])
        got = (yield self.one("Email/get", {"ids": [email],
                                            "properties": ["blobId", "textBody"]}))["list"][0]
        response, body = yield self.request(
            "GET", f"/jmap/download/{self.account}/{got['blobId']}/m.eml",
            headers={b"Authorization": [b"Basic amFuZTpqYW5lLXBhc3N3b3Jk"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(body, raw)
        part = got["textBody"][0]["blobId"]
        response, body = yield self.request(
            "GET", f"/jmap/download/{self.account}/{part}/part.txt",
            headers={b"Authorization": [b"Basic amFuZTpqYW5lLXBhc3N3b3Jk"]})
        self.assertEqual(body, b"Just the text.\r\n")
        # Bob holds no such message: not found for him.
        response, _ = yield self.request(
            "GET", f"/jmap/download/{account_id(self.bob.id)}/{got['blobId']}/m.eml",
            headers={b"Authorization": [b"Basic Ym9iOmJvYi1wYXNzd29yZA=="]})
        self.assertEqual(response.code, 404)

    @defer.inlineCallbacks
    def test_import_attached_message(self):
        """A message attached to another imports by its part's blob id, as an Email of its own."""
        inner = message(subject="Forwarded inside", message_id="inner@x")
        outer = (b"From: a@example.com\r\nSubject: Fwd\r\nMIME-Version: 1.0\r\n"
                 b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\n"
                 b"Content-Type: text/plain\r\n\r\nSee below.\r\n--z\r\n"
                 b"Content-Type: message/rfc822\r\n\r\n" + inner + b"\r\n--z--\r\n")
        [email] = yield self.import_messages([outer])
        got = yield self.one("Email/get", {"ids": [email], "properties": ["attachments"]})
        [attached] = got["list"][0]["attachments"]
        inbox = (yield self.mailboxes())["Inbox"]["id"]
        response = yield self.one("Email/import", {"emails": {
            "k": {"blobId": attached["blobId"], "mailboxIds": {inbox: True}}}})
        created = response["created"]["k"]
        self.assertNotEqual(created["blobId"], attached["blobId"])
        got = yield self.one("Email/get", {"ids": [created["id"]], "properties": ["subject"]})
        self.assertEqual(got["list"][0]["subject"], "Forwarded inside")

    @defer.inlineCallbacks
    def test_parse(self):
        """Email/parse reads an uploaded blob without importing it."""
        blob = yield self.upload(message(subject="Parse me"))
        response = yield self.one("Email/parse", {"blobIds": [blob, "f" * 64],
                                                  "properties": ["subject", "id", "size"]})
        self.assertEqual(response["parsed"][blob]["subject"], "Parse me")
        self.assertIsNone(response["parsed"][blob]["id"])
        self.assertEqual(response["notFound"], ["f" * 64])
        total = (yield self.mailboxes())["Inbox"]["totalEmails"]
        self.assertEqual(total, 0)


class EmailSetTests(MailTestCase):
    """
    Email/set updates and destroys, and the counts and states they move.
    """

    @defer.inlineCallbacks
    def test_keywords_and_counts(self):
        """Marking read moves unreadEmails; a patch path toggles one keyword; no-ops change nothing."""
        emails = yield self.import_messages([message(subject="A"), message(subject="B")])
        inbox = (yield self.mailboxes())["Inbox"]
        self.assertEqual((inbox["totalEmails"], inbox["unreadEmails"],
                          inbox["totalThreads"], inbox["unreadThreads"]), (2, 2, 2, 2))
        response = yield self.one("Email/set", {"update": {emails[0]: {"keywords/$seen": True}}})
        self.assertEqual(response["updated"], {emails[0]: None})
        inbox = (yield self.mailboxes())["Inbox"]
        self.assertEqual((inbox["unreadEmails"], inbox["unreadThreads"]), (1, 1))
        again = yield self.one("Email/set", {"update": {emails[0]: {"keywords": {"$seen": True}}}})
        self.assertEqual(again["oldState"], again["newState"])

    @defer.inlineCallbacks
    def test_move_and_destroy(self):
        """Moving changes both mailboxes' counts; destroy removes the message and its thread."""
        [email] = yield self.import_messages([message()])
        boxes = yield self.mailboxes()
        trash = boxes["Trash"]["id"]
        yield self.one("Email/set", {"update": {email: {"mailboxIds": {trash: True}}}})
        boxes = yield self.mailboxes()
        self.assertEqual((boxes["Inbox"]["totalEmails"], boxes["Trash"]["totalEmails"]), (0, 1))
        got = (yield self.one("Email/get", {"ids": [email], "properties": ["threadId"]}))["list"]
        thread = got[0]["threadId"]
        response = yield self.one("Email/set", {"destroy": [email]})
        self.assertEqual(response["destroyed"], [email])
        threads = yield self.one("Thread/get", {"ids": [thread]})
        self.assertEqual(threads["notFound"], [thread])
        self.assertEqual((yield self.mailboxes())["Trash"]["totalEmails"], 0)

    @defer.inlineCallbacks
    def test_invalid_updates(self):
        """Immutable properties, unknown mailboxes and empty mailboxIds are refused."""
        [email] = yield self.import_messages([message()])
        response = yield self.one("Email/set", {"update": {
            email: {"subject": "changed"}}})
        self.assertEqual(response["notUpdated"][email]["type"], "invalidProperties")
        response = yield self.one("Email/set", {"update": {email: {"mailboxIds": {}}}})
        self.assertEqual(response["notUpdated"][email]["properties"], ["mailboxIds"])
        response = yield self.one("Email/set", {"update": {email: {"mailboxIds/mzzz": True}}})
        self.assertEqual(response["notUpdated"][email]["properties"], ["mailboxIds"])
        response = yield self.one("Email/set", {"update": {"enope": {"keywords": {}}}})
        self.assertEqual(response["notUpdated"]["enope"]["type"], "notFound")

    @defer.inlineCallbacks
    def test_mailbox_destroy_with_emails(self):
        """A mailbox with mail is mailboxHasEmail, unless onDestroyRemoveEmails."""
        work = yield self.create_mailbox(name="Work")
        inbox = (yield self.mailboxes())["Inbox"]["id"]
        [only_here] = yield self.import_messages([message(subject="one")], mailbox=work)
        [both] = yield self.import_messages([message(subject="two")], mailbox=work)
        yield self.one("Email/set", {"update": {both: {f"mailboxIds/{inbox}": True}}})
        response = yield self.one("Mailbox/set", {"destroy": [work]})
        self.assertEqual(response["notDestroyed"][work]["type"], "mailboxHasEmail")
        response = yield self.one("Mailbox/set", {"destroy": [work], "onDestroyRemoveEmails": True})
        self.assertEqual(response["destroyed"], [work])
        got = yield self.one("Email/get", {"ids": [only_here, both], "properties": ["mailboxIds"]})
        self.assertEqual(got["notFound"], [only_here])
        self.assertEqual(got["list"][0]["mailboxIds"], {inbox: True})

    @defer.inlineCallbacks
    def test_changes(self):
        """Email/changes reports imports, updates and destroys."""
        start = (yield self.one("Email/get", {"ids": []}))["state"]
        emails = yield self.import_messages([message(subject="A"), message(subject="B")])
        yield self.one("Email/set", {"update": {emails[0]: {"keywords/$flagged": True}},
                                     "destroy": [emails[1]]})
        response = yield self.one("Email/changes", {"sinceState": start})
        self.assertEqual(response["created"], [emails[0]])
        self.assertEqual(response["destroyed"], [])


class ThreadTests(MailTestCase):
    """
    Threading by Message-ID, In-Reply-To and References.
    """

    @defer.inlineCallbacks
    def thread_of(self, emails):
        got = yield self.one("Email/get", {"ids": emails, "properties": ["threadId"]})
        return [item["threadId"] for item in got["list"]]

    @defer.inlineCallbacks
    def test_reply_joins_thread(self):
        """A reply shares its parent's thread; Thread/get lists both, oldest first."""
        emails = yield self.import_messages(
            [message(subject="Plan", message_id="p@x"),
             message(subject="Re: Plan", message_id="r@x", in_reply_to="p@x")],
            received=["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"])
        threads = yield self.thread_of(emails)
        self.assertEqual(threads[0], threads[1])
        got = yield self.one("Thread/get", {"ids": [threads[0]]})
        self.assertEqual(got["list"][0]["emailIds"], emails)
        inbox = (yield self.mailboxes())["Inbox"]
        self.assertEqual((inbox["totalEmails"], inbox["totalThreads"]), (2, 1))

    @defer.inlineCallbacks
    def test_other_subject_starts_thread(self):
        """A reference with a different base subject does not thread."""
        emails = yield self.import_messages(
            [message(subject="Plan", message_id="p@x"),
             message(subject="Something else", in_reply_to="p@x")])
        threads = yield self.thread_of(emails)
        self.assertNotEqual(threads[0], threads[1])

    @defer.inlineCallbacks
    def test_merge_out_of_order(self):
        """Three messages arriving out of order end in one thread; the merge is reported."""
        a = message(subject="Trip", message_id="a@x")
        b = message(subject="Re: Trip", message_id="b@x", in_reply_to="a@x", references=["a@x"])
        # c's parent b is missing: c only references a, which is not here yet either.
        [first] = yield self.import_messages([message(subject="Re: Trip", message_id="c@x",
                                                      in_reply_to="b@x")])
        [second] = yield self.import_messages([a])
        threads = yield self.thread_of([first, second])
        self.assertNotEqual(threads[0], threads[1])
        state = (yield self.one("Thread/get", {"ids": []}))["state"]
        email_state = (yield self.one("Email/get", {"ids": []}))["state"]
        # b links a (its parent) and c (which replied to it): the threads merge.
        [third] = yield self.import_messages([b])
        threads = yield self.thread_of([first, second, third])
        self.assertEqual(len(set(threads)), 1)
        changes = yield self.one("Thread/changes", {"sinceState": state})
        self.assertEqual(len(changes["destroyed"]), 1)
        self.assertIn(threads[0], changes["updated"] + changes["created"])
        moved = yield self.one("Email/changes", {"sinceState": email_state})
        self.assertEqual(moved["created"], [third])
        self.assertEqual(len(moved["updated"]), 1)
        inbox = (yield self.mailboxes())["Inbox"]
        self.assertEqual((inbox["totalEmails"], inbox["totalThreads"]), (3, 1))

    @defer.inlineCallbacks
    def test_unread_threads_and_trash(self):
        """An unread message only in the Trash leaves the Inbox's unreadThreads alone."""
        emails = yield self.import_messages(
            [message(subject="T", message_id="t1@x"),
             message(subject="Re: T", message_id="t2@x", in_reply_to="t1@x")])
        boxes = yield self.mailboxes()
        trash = boxes["Trash"]["id"]
        yield self.one("Email/set", {"update": {
            emails[0]: {"keywords/$seen": True},
            emails[1]: {"mailboxIds": {trash: True}}}})
        boxes = yield self.mailboxes()
        self.assertEqual(boxes["Inbox"]["unreadThreads"], 0)
        self.assertEqual(boxes["Trash"]["unreadThreads"], 1)
        self.assertEqual(boxes["Inbox"]["totalThreads"], 1)


class EmailCopyTests(MailTestCase):
    """
    Email/copy between accounts the user may write.
    """

    @defer.inlineCallbacks
    def test_copy_to_group(self):
        """A copy into the shared account gets its own id; the original can go with it."""
        [email] = yield self.import_messages([message(subject="Share me")])
        sales = account_id(self.sales.id)
        boxes = yield self.one("Mailbox/get", {"accountId": sales, "ids": None})
        target = next(m["id"] for m in boxes["list"] if m["role"] == "inbox")
        responses = yield self.call([[
            "Email/copy", {"fromAccountId": self.account, "accountId": sales,
                           "create": {"c": {"id": email, "mailboxIds": {target: True},
                                            "keywords": {"$flagged": True}}},
                           "onSuccessDestroyOriginal": True}, "c"]])
        [(copied_name, copied, _), (set_name, destroyed, _)] = responses
        self.assertEqual((copied_name, set_name), ("Email/copy", "Email/set"))
        copy_id = copied["created"]["c"]["id"]
        self.assertEqual(destroyed["destroyed"], [email])
        got = yield self.one("Email/get", {"accountId": sales, "ids": [copy_id],
                                           "properties": ["subject", "keywords", "mailboxIds"]})
        self.assertEqual(got["list"][0]["subject"], "Share me")
        self.assertEqual(got["list"][0]["keywords"], {"$flagged": True})
        mine = yield self.one("Email/get", {"ids": [email]})
        self.assertEqual(mine["notFound"], [email])

    @defer.inlineCallbacks
    def test_copy_may_not_change_the_message(self):
        """Only mailboxIds, keywords and receivedAt may be given to a copy."""
        [email] = yield self.import_messages([message()])
        sales = account_id(self.sales.id)
        boxes = yield self.one("Mailbox/get", {"accountId": sales, "ids": None})
        target = boxes["list"][0]["id"]
        response = yield self.one("Email/copy", {
            "fromAccountId": self.account, "accountId": sales,
            "create": {"c": {"id": email, "mailboxIds": {target: True}, "subject": "new"}}})
        self.assertEqual(response["notCreated"]["c"]["properties"], ["subject"])


class EmailCreateTests(MailTestCase):
    """
    Email/set create: messages built from JMAP properties (RFC 8621 section 4.6).
    """

    @defer.inlineCallbacks
    def test_create_draft(self):
        """A draft made of headers and a text body is stored as a MIME message with Message-ID and Date."""
        drafts = (yield self.mailboxes())["Drafts"]["id"]
        response = yield self.one("Email/set", {"create": {"k1": {
            "mailboxIds": {drafts: True},
            "keywords": {"$draft": True, "$seen": True},
            "from": [{"name": "Jane", "email": "jane@example.org"}],
            "to": [{"name": "John", "email": "john@example.com"}],
            "subject": "World domination",
            "receivedAt": "2018-07-10T01:05:08Z",
            "sentAt": "2018-07-10T11:05:08+10:00",
            "textBody": [{"partId": "body", "type": "text/plain"}],
            "bodyValues": {"body": {"value": "I have the most brilliant plan."}},
        }}})
        created = response["created"]["k1"]
        self.assertEqual(set(created), {"id", "blobId", "threadId", "size"})
        got = (yield self.one("Email/get", {
            "ids": [created["id"]], "fetchTextBodyValues": True,
            "properties": ["subject", "from", "to", "sentAt", "messageId", "keywords",
                           "receivedAt", "bodyValues", "textBody", "size"]}))["list"][0]
        self.assertEqual(got["subject"], "World domination")
        self.assertEqual(got["to"], [{"name": "John", "email": "john@example.com"}])
        self.assertEqual(got["sentAt"], "2018-07-10T11:05:08+10:00")
        self.assertEqual(len(got["messageId"]), 1)
        self.assertEqual(got["receivedAt"], "2018-07-10T01:05:08Z")
        self.assertEqual(got["keywords"], {"$draft": True, "$seen": True})
        part = got["textBody"][0]["partId"]
        self.assertEqual(got["bodyValues"][part]["value"].strip(), "I have the most brilliant plan.")
        self.assertEqual(got["size"], created["size"])
        # Drafts are neither unread nor counted unread.
        self.assertEqual((yield self.mailboxes())["Drafts"]["unreadEmails"], 0)

    @defer.inlineCallbacks
    def test_create_with_attachment(self):
        """An attachment given by blobId is embedded; the message has an attachment."""
        drafts = (yield self.mailboxes())["Drafts"]["id"]
        blob = yield self.upload(b"%PDF-1.4 not really a pdf\x00\x01\x02")
        response = yield self.one("Email/set", {"create": {"k": {
            "mailboxIds": {drafts: True}, "subject": "Report",
            "textBody": [{"partId": "t", "type": "text/plain"}],
            "bodyValues": {"t": {"value": "See attached."}},
            "attachments": [{"blobId": blob, "type": "application/pdf", "name": "report.pdf"}],
        }}})
        created = response["created"]["k"]
        got = (yield self.one("Email/get", {"ids": [created["id"]],
                                            "properties": ["attachments", "hasAttachment"]}))
        [attachment] = got["list"][0]["attachments"]
        self.assertTrue(got["list"][0]["hasAttachment"])
        self.assertEqual((attachment["name"], attachment["type"]), ("report.pdf", "application/pdf"))
        response, body = yield self.request(
            "GET", f"/jmap/download/{self.account}/{attachment['blobId']}/r.pdf",
            headers={b"Authorization": [b"Basic amFuZTpqYW5lLXBhc3N3b3Jk"]})
        self.assertEqual(body, b"%PDF-1.4 not really a pdf\x00\x01\x02")

    @defer.inlineCallbacks
    def test_create_from_body_structure(self):
        """A bodyStructure of multipart/alternative becomes textBody and htmlBody parts."""
        drafts = (yield self.mailboxes())["Drafts"]["id"]
        response = yield self.one("Email/set", {"create": {"k": {
            "mailboxIds": {drafts: True}, "subject": "Both kinds",
            "bodyStructure": {"type": "multipart/alternative", "subParts": [
                {"partId": "t", "type": "text/plain"},
                {"partId": "h", "type": "text/html"}]},
            "bodyValues": {"t": {"value": "plain words"}, "h": {"value": "<p>rich words</p>"}},
        }}})
        email = response["created"]["k"]["id"]
        got = (yield self.one("Email/get", {
            "ids": [email], "properties": ["textBody", "htmlBody", "bodyValues", "bodyStructure"],
            "fetchAllBodyValues": True}))["list"][0]
        self.assertEqual(got["bodyStructure"]["type"], "multipart/alternative")
        [text], [html] = got["textBody"], got["htmlBody"]
        self.assertEqual((text["type"], html["type"]), ("text/plain", "text/html"))
        self.assertEqual(got["bodyValues"][text["partId"]]["value"].strip(), "plain words")
        self.assertEqual(got["bodyValues"][html["partId"]]["value"].strip(), "<p>rich words</p>")

    @defer.inlineCallbacks
    def test_create_errors(self):
        """Missing blobs, conflicting body properties and bad mailboxes are refused by the RFC's errors."""
        drafts = (yield self.mailboxes())["Drafts"]["id"]
        text = {"textBody": [{"partId": "t", "type": "text/plain"}],
                "bodyValues": {"t": {"value": "x"}}}
        response = yield self.one("Email/set", {"create": {
            "blob": {"mailboxIds": {drafts: True},
                     "attachments": [{"blobId": "f" * 64, "type": "image/png"}], **text},
            "both": {"mailboxIds": {drafts: True}, **text,
                     "bodyStructure": {"partId": "t", "type": "text/plain"}},
            "nobox": {"mailboxIds": {}, **text},
            "headers": {"mailboxIds": {drafts: True}, "headers": [{"name": "X", "value": "y"}]},
            "id": {"mailboxIds": {drafts: True}, "id": "e1", **text},
        }})
        refused = response["notCreated"]
        self.assertEqual(refused["blob"]["type"], "blobNotFound")
        self.assertEqual(refused["blob"]["notFound"], ["f" * 64])
        self.assertEqual(refused["both"]["type"], "invalidProperties")
        self.assertEqual(refused["nobox"]["properties"], ["mailboxIds"])
        self.assertEqual(refused["headers"]["type"], "invalidProperties")
        self.assertEqual(refused["id"]["type"], "invalidProperties")
        self.assertIsNone(response["created"])


class EmailLimitTests(MailTestCase):
    """
    mail-max-size and the principal's quota.
    """

    settings_overrides = {"mail-max-size": "2000"}

    @defer.inlineCallbacks
    def test_max_size(self):
        """Creating or importing a message over mail-max-size is tooLarge."""
        drafts = (yield self.mailboxes())["Drafts"]["id"]
        response = yield self.one("Email/set", {"create": {"k": {
            "mailboxIds": {drafts: True},
            "textBody": [{"partId": "t", "type": "text/plain"}],
            "bodyValues": {"t": {"value": "x" * 3000}}}}})
        self.assertEqual(response["notCreated"]["k"]["type"], "tooLarge")
        blob = yield self.upload(message(body="y" * 3000))
        response = yield self.one("Email/import", {"emails": {
            "k": {"blobId": blob, "mailboxIds": {drafts: True}}}})
        self.assertEqual(response["notCreated"]["k"]["type"], "tooLarge")

    @defer.inlineCallbacks
    def test_quota(self):
        """An import that would take the account past its quota is overQuota."""
        yield self.service.directory.update("jane", quota=1500)
        raws = [message(body="z" * 600) for _ in range(3)]
        inbox = (yield self.mailboxes())["Inbox"]["id"]
        emails = {}
        for index, raw in enumerate(raws):
            emails[f"k{index}"] = {"blobId": (yield self.upload(raw)), "mailboxIds": {inbox: True}}
        response = yield self.one("Email/import", {"emails": emails})
        self.assertEqual(len(response["created"]), 1)
        self.assertEqual({e["type"] for e in response["notCreated"].values()}, {"overQuota"})


class EmailReviewTests(MailTestCase):
    """
    Cases a review found: ids past 63 bits, patches of keywords in other
    cases, copies that would keep another account's mailboxes, dates.
    """

    @defer.inlineCallbacks
    def test_huge_ids(self):
        """Ids whose numbers pass 63 bits are simply not found, never a serverFail."""
        [email] = yield self.import_messages([message()])
        huge_email, huge_box = "e" + "z" * 13, "m" + "z" * 13
        got = yield self.one("Email/get", {"ids": [huge_email]})
        self.assertEqual(got["notFound"], [huge_email])
        response = yield self.one("Email/set", {
            "update": {huge_email: {"keywords": {}},
                       email: {"mailboxIds": {huge_box: True}}},
            "destroy": ["e" + "y" * 13]})
        self.assertEqual(response["notUpdated"][huge_email]["type"], "notFound")
        self.assertEqual(response["notUpdated"][email]["properties"], ["mailboxIds"])
        self.assertEqual(response["notDestroyed"]["e" + "y" * 13]["type"], "notFound")
        found = yield self.one("Email/query", {"filter": {"inMailbox": huge_box}})
        self.assertEqual(found["ids"], [])
        threads = yield self.one("Thread/get", {"ids": ["t" + "z" * 13]})
        self.assertEqual(len(threads["notFound"]), 1)

    @defer.inlineCallbacks
    def test_keyword_patch_ignores_case(self):
        """Removing "keywords/$SEEN" removes $seen: keywords are case-insensitive."""
        [email] = yield self.import_messages([message()], keywords={"$seen": True})
        yield self.one("Email/set", {"update": {email: {"keywords/$SEEN": None}}})
        got = yield self.one("Email/get", {"ids": [email], "properties": ["keywords"]})
        self.assertEqual(got["list"][0]["keywords"], {})

    @defer.inlineCallbacks
    def test_copy_needs_mailboxes(self):
        """A copy that does not name its mailboxes is refused: the original's are another account's."""
        [email] = yield self.import_messages([message()])
        response = yield self.one("Email/copy", {
            "fromAccountId": self.account, "accountId": account_id(self.sales.id),
            "create": {"c": {"id": email}}})
        self.assertEqual(response["notCreated"]["c"]["properties"], ["mailboxIds"])

    @defer.inlineCallbacks
    def test_dates(self):
        """receivedAt is a full RFC 3339 UTC date-time, in and out, whatever the year."""
        inbox = (yield self.mailboxes())["Inbox"]["id"]
        blob = yield self.upload(message())
        emails = {"old": {"blobId": blob, "mailboxIds": {inbox: True},
                          "receivedAt": "0999-01-01T00:00:00Z"}}
        for key, date in (("day", "2024-01-01Z"), ("minute", "2024-01-01T00:00Z"),
                          ("space", "2024-01-01 00:00:00Z"), ("offset", "2024-01-01T00:00:00+01:00")):
            emails[key] = {"blobId": blob, "mailboxIds": {inbox: True}, "receivedAt": date}
        response = yield self.one("Email/import", {"emails": dict(list(emails.items())[:5])})
        self.assertEqual(set(response["notCreated"]), {"day", "minute", "space", "offset"})
        old = response["created"]["old"]["id"]
        got = yield self.one("Email/get", {"ids": [old], "properties": ["receivedAt"]})
        self.assertEqual(got["list"][0]["receivedAt"], "0999-01-01T00:00:00Z")

    @defer.inlineCallbacks
    def test_headers_refused_on_create(self):
        """Email/set create refuses a headers property, even an empty one."""
        drafts = (yield self.mailboxes())["Drafts"]["id"]
        response = yield self.one("Email/set", {"create": {"k": {
            "mailboxIds": {drafts: True}, "headers": []}}})
        self.assertEqual(response["notCreated"]["k"]["properties"], ["headers"])

    @defer.inlineCallbacks
    def test_blob_copy_of_a_part(self):
        """Blob/copy of a body part's blob id gives the target account a blob of the part's content."""
        [email] = yield self.import_messages([message(body="Part to share.\r\n")])
        got = yield self.one("Email/get", {"ids": [email], "properties": ["textBody"]})
        part = got["list"][0]["textBody"][0]["blobId"]
        sales = account_id(self.sales.id)
        [(_, copied, _)] = yield self.call([["Blob/copy", {
            "fromAccountId": self.account, "accountId": sales, "blobIds": [part, "x_1"]}, "c"]])
        new_id = copied["copied"][part]
        self.assertNotEqual(new_id, part)
        self.assertEqual(list(copied["notCopied"]), ["x_1"])
        response, body = yield self.request(
            "GET", f"/jmap/download/{sales}/{new_id}/part.txt",
            headers={b"Authorization": [b"Basic amFuZTpqYW5lLXBhc3N3b3Jk"]})
        self.assertEqual(body, b"Part to share.\r\n")

    @defer.inlineCallbacks
    def test_missing_blob(self):
        """A message whose bytes are gone from disk still answers: its body properties are null."""
        import os
        [email] = yield self.import_messages([message()])
        got = yield self.one("Email/get", {"ids": [email], "properties": ["blobId"]})
        os.unlink(self.service.blobs.path_for(got["list"][0]["blobId"]))
        got = yield self.one("Email/get", {"ids": [email],
                                           "properties": ["subject", "textBody", "header:X"]})
        [found] = got["list"]
        self.assertEqual(found["subject"], "Hello")
        self.assertIsNone(found["textBody"])
        self.assertIsNone(found["header:X"])
        self.flushLoggedErrors()


class ParsingProcessTests(EmailImportGetTests):
    """
    The import tests again, each message parsed in a worker process.
    """

    settings_overrides = {"mail-import-max-items": "6", "worker-processes": "1"}

    @defer.inlineCallbacks
    def test_created_message_searchable(self):
        """A message built by Email/set, parsed in a worker, is found by its words at once."""
        inbox = (yield self.mailboxes())["Inbox"]["id"]
        response = yield self.one("Email/set", {"create": {"k": {
            "mailboxIds": {inbox: True}, "subject": "Quarterly marmalade",
            "bodyValues": {"1": {"value": "Oranges from Seville."}},
            "textBody": [{"partId": "1", "type": "text/plain"}]}}})
        created = response["created"]["k"]["id"]
        found = yield self.one("Email/query", {"filter": {"text": "seville"}})
        self.assertEqual(found["ids"], [created])
