"""
A real JMAP client library from PyPI (jmapc) against a node over HTTPS:
what a third-party client sees of the Session and the API.
"""

import os

import trustme
from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from stalwart_tw.jmap.principal import principal_id
from stalwart_tw.jmap.session import account_id
from tests.support import NodeServiceMixin, node_settings


class JmapcTests(NodeServiceMixin, TestCase):
    """
    jmapc fetches the Session, echoes, and reads a Principal.
    """

    @defer.inlineCallbacks
    def setUp(self):
        authority = trustme.CA()
        certificate = authority.issue_cert("localhost")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.ca_path = os.path.join(folder, "ca.pem")
        cert_path, key_path = os.path.join(folder, "c.pem"), os.path.join(folder, "k.pem")
        authority.cert_pem.write_to_path(self.ca_path)
        certificate.cert_chain_pems[0].write_to_path(cert_path)
        certificate.private_key_pem.write_to_path(key_path)
        service = yield self.start(node_settings(self, **{
            "jmap-cert-path": cert_path, "jmap-key-path": key_path}))
        port = service.ports["JMAP"].getHost().port
        # The Session's URLs must lead the client back to this node.
        served = service.settings.replace(jmap_url=f"https://localhost:{port}")
        service.http._settings = service.jmap.sessions._settings = served
        self.host = f"localhost:{port}"
        self.admin = yield service.directory.get("admin")

    def client(self):
        from jmapc import Client

        client = Client.create_with_password(
            host=self.host, user="admin", password="the-service-secret"
        )
        session = client.requests_session
        # requests lets REQUESTS_CA_BUNDLE in the environment override a
        # session's verify; this client trusts the test's authority only.
        session.trust_env = False
        session.verify = self.ca_path
        return client

    def test_session_echo_and_principal(self):
        """jmapc parses the Session, gets Core/echo back, and reads the admin principal."""
        from jmapc.methods import CoreEcho, CustomMethod

        def talk():
            client = self.client()
            session = client.jmap_session
            echo = client.request(CoreEcho(data={"hello": True, "high": 5}))
            method = CustomMethod(data={
                "accountId": account_id(self.admin.id), "ids": [principal_id(self.admin.id)]})
            method.jmap_method = "Principal/get"
            method.using = {"urn:ietf:params:jmap:principals"}
            principal = client.request(method)
            client.requests_session.close()
            return session, echo, principal

        def check(results):
            session, echo, principal = results
            self.assertEqual(session.username, "admin")
            self.assertTrue(session.api_url.startswith(f"https://{self.host}/"))
            self.assertEqual(echo.data, {"hello": True, "high": 5})
            self.assertEqual(principal.data["list"][0]["name"], "admin")

        # jmapc blocks; it runs on a thread while the node answers on the reactor.
        return threads.deferToThread(talk).addCallback(check)

    def test_mail(self):
        """jmapc uploads and imports a message, lists mailboxes, queries the Inbox and reads the email back."""
        from jmapc import Comparator, EmailQueryFilterCondition, MailboxQueryFilterCondition, Ref
        from jmapc.methods import (
            CustomMethod, EmailGet, EmailQuery, MailboxGet, MailboxQuery, ThreadGet,
        )

        raw = (b"From: Ann <ann@example.com>\r\nTo: admin@example.org\r\n"
               b"Subject: Hello from jmapc\r\nMessage-ID: <jmapc-1@example.com>\r\n"
               b"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n\r\nThe body of the message.\r\n")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "message.eml")
        with open(path, "wb") as file:
            file.write(raw)

        def talk():
            client = self.client()
            blob = client.upload_blob(path)
            inbox = client.request(MailboxQuery(filter=MailboxQueryFilterCondition(role="inbox")))
            imported = CustomMethod(data={
                "accountId": client.account_id,
                "emails": {"m": {"blobId": blob.id, "mailboxIds": {inbox.ids[0]: True}}}})
            imported.jmap_method = "Email/import"
            imported.using = {"urn:ietf:params:jmap:mail"}
            client.request(imported)
            mailboxes = client.request(MailboxGet(ids=None))
            results = client.request([
                EmailQuery(filter=EmailQueryFilterCondition(in_mailbox=inbox.ids[0]),
                           sort=[Comparator(property="receivedAt", is_ascending=False)],
                           calculate_total=True),
                EmailGet(ids=Ref("/ids"), fetch_text_body_values=True),
                ThreadGet(ids=Ref("/list/*/threadId")),
            ])
            client.requests_session.close()
            return mailboxes, results

        def check(found):
            mailboxes, results = found
            names = {mailbox.name: mailbox for mailbox in mailboxes.data}
            self.assertEqual(names["Inbox"].role, "inbox")
            self.assertEqual(names["Inbox"].total_emails, 1)
            query, get, thread = (result.response for result in results)
            self.assertEqual(getattr(query, "total", None), 1, repr(query))
            [email] = get.data
            self.assertEqual(email.subject, "Hello from jmapc")
            self.assertEqual(email.mail_from[0].email, "ann@example.com")
            self.assertEqual(email.body_values[email.text_body[0].part_id].value,
                             "The body of the message.\n")
            self.assertEqual(thread.data[0].email_ids, [email.id])

        return threads.deferToThread(talk).addCallback(check)
