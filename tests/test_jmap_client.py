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
