"""
What the mail tests share: a node with two users and a group, and a JMAP
client speaking to it over loopback HTTP.
"""

import json
from base64 import b64encode

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.jmap.session import account_id
from tests.support import NodeServiceMixin

MAIL_USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]


def credentials(login, password):
    return {b"Authorization": [b"Basic " + b64encode(f"{login}:{password}".encode())],
            b"Content-Type": [b"application/json"]}


class MailTestCase(NodeServiceMixin, TestCase):
    """
    A node with jane and bob (users) and sales (a group jane belongs to).
    """

    settings_overrides = {}

    @defer.inlineCallbacks
    def setUp(self):
        service = yield self.start_with_client(**self.settings_overrides)
        directory = service.directory
        yield directory.create_principal("domain", "example.org")
        self.jane = yield directory.create_principal(
            "individual", "jane", secret="jane-password", email="jane@example.org"
        )
        self.bob = yield directory.create_principal(
            "individual", "bob", secret="bob-password", email="bob@example.org"
        )
        self.sales = yield directory.create_principal("group", "sales", members=["jane"])
        self.account = account_id(self.jane.id)
        self.url = self.base + "/jmap/"

    as_jane = ("jane", "jane-password")
    as_bob = ("bob", "bob-password")

    @defer.inlineCallbacks
    def call(self, calls, who=None, using=MAIL_USING):
        """Run method calls; the method responses."""
        login, password = who or self.as_jane
        response = yield self.http.post(
            self.url,
            data=json.dumps({"using": using, "methodCalls": calls}).encode(),
            headers=credentials(login, password),
        )
        body = yield response.json()
        self.assertEqual(response.code, 200, body)
        return body["methodResponses"]

    @defer.inlineCallbacks
    def one(self, name, arguments, who=None):
        """Run one method call in jane's account unless told; its response arguments."""
        arguments = {"accountId": self.account, **arguments}
        [(answered, response, _)] = yield self.call([[name, arguments, "c"]], who)
        if answered == "error":
            return {"error": response}
        self.assertEqual(answered, name)
        return response

    @defer.inlineCallbacks
    def mailboxes(self):
        """Jane's mailboxes by name."""
        response = yield self.one("Mailbox/get", {"ids": None})
        return {mailbox["name"]: mailbox for mailbox in response["list"]}

    @defer.inlineCallbacks
    def create_mailbox(self, **properties):
        response = yield self.one("Mailbox/set", {"create": {"k": properties}})
        self.assertIsNone(response["notCreated"], response)
        return response["created"]["k"]["id"]

    @defer.inlineCallbacks
    def upload(self, data, who=None, account=None):
        """Upload bytes to an account (jane's); the blob id."""
        login, password = who or self.as_jane
        headers = credentials(login, password)
        headers[b"Content-Type"] = [b"message/rfc822"]
        response = yield self.http.post(
            f"{self.base}/jmap/upload/{account or self.account}/", data=data, headers=headers
        )
        body = yield response.json()
        self.assertEqual(response.code, 201, body)
        return body["blobId"]

    @defer.inlineCallbacks
    def import_messages(self, raws, mailbox=None, keywords=None, received=None, account=None):
        """Upload and import messages into a mailbox (the Inbox); their Email ids in order."""
        account = account or self.account
        if mailbox is None:
            found = yield self.one("Mailbox/get", {"accountId": account, "ids": None})
            mailbox = next(m["id"] for m in found["list"] if m["role"] == "inbox")
        emails = {}
        for index, raw in enumerate(raws):
            item = {"blobId": (yield self.upload(raw, account=account)),
                    "mailboxIds": {mailbox: True}}
            if keywords is not None:
                item["keywords"] = keywords
            if received is not None:
                item["receivedAt"] = received[index]
            emails[f"m{index}"] = item
        created = {}
        names = list(emails)
        for start in range(0, len(names), 5):
            chunk = {name: emails[name] for name in names[start:start + 5]}
            response = yield self.one("Email/import", {"accountId": account, "emails": chunk})
            self.assertIsNone(response.get("notCreated"), response)
            created.update(response["created"])
        return [created[name]["id"] for name in names]


def message(subject="Hello", sender="Alice <alice@example.com>", to="jane@example.org",
            body="Hello Jane,\r\nhow are you?\r\n", message_id=None, in_reply_to=None,
            references=None, date="Tue, 02 Jan 2024 03:04:05 +0100", extra=()):
    """A plain-text message, CRLF line ends."""
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Date: {date}"]
    if message_id:
        lines.append(f"Message-ID: <{message_id}>")
    if in_reply_to:
        lines.append(f"In-Reply-To: <{in_reply_to}>")
    if references:
        lines.append("References: " + " ".join(f"<{r}>" for r in references))
    lines += list(extra)
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", ""]
    return "\r\n".join(lines).encode() + body.encode()
