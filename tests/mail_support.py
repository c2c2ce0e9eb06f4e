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
