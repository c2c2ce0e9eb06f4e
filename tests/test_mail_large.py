"""
A 48 MB message through a real node process: uploaded (streamed to its
blob), imported (parsed once), read back, while the node's peak memory
stays within a bound; and an over-size one refused without harm.
"""

import json
import os

from twisted.internet import defer
from twisted.trial.unittest import TestCase
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool

from tests.test_node_process import LISTENING, basic, free_port, start_node

# The node's peak resident memory may grow by at most this much over its
# size before the message: the raw message once, one decoded part, the
# parser's bookkeeping.
PEAK_GROWTH = 160 * 1024 * 1024
ATTACHMENT = 34 * 1024 * 1024
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]


def big_message():
    # Base64 of 34 MiB, lines ended by CRLF, is about 48 MB: under the 50 MB upload limit.
    import base64
    chunk = base64.encodebytes(bytes(range(256)) * 3)
    lines = chunk * (ATTACHMENT // 768)
    return (b"From: Big <big@example.com>\r\nSubject: A large one\r\n"
            b"Message-ID: <large-1@example.com>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
            b"--b\r\nContent-Type: application/octet-stream; name=big.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + lines.replace(b"\n", b"\r\n") + b"--b--\r\n")


def peak_memory(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class LargeMessageTests(TestCase):
    """
    The memory a large message costs the node is bounded.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_large_import(self):
        """A 48 MB message is imported and read back; the node's peak memory grows by a bound."""
        if not os.path.exists("/proc/self/status"):
            raise self.skipTest("no /proc here to read a process's peak memory")
        child, transport = start_node(self, f"--db-path={os.path.abspath(self.mktemp())}",
                                      "--jmap-port=0", f"--manhole-port={free_port()}",
                                      "--admin-secret=the-process-secret")
        yield child.wait_for(rb"node ready")
        port = int(dict(LISTENING.findall(child.output))[b"JMAP"])
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        headers = basic("admin", "the-process-secret")
        base = f"http://127.0.0.1:{port}"

        @defer.inlineCallbacks
        def call(calls):
            response = yield http.post(
                base + "/jmap/", data=json.dumps({"using": USING, "methodCalls": calls}).encode(),
                headers={**headers, b"Content-Type": [b"application/json"]})
            return (yield response.json())["methodResponses"]

        [(_, boxes, _)] = yield call([["Mailbox/get", {"accountId": "a1", "ids": None}, "m"]])
        inbox = next(box["id"] for box in boxes["list"] if box["role"] == "inbox")
        before = peak_memory(transport.pid)
        raw = big_message()
        response = yield http.post(f"{base}/jmap/upload/a1/", data=raw,
                                   headers={**headers, b"Content-Type": [b"message/rfc822"]})
        self.assertEqual(response.code, 201, (yield response.content()))
        blob = (yield response.json())["blobId"]
        del raw
        [(_, imported, _)] = yield call([["Email/import", {"accountId": "a1", "emails": {
            "big": {"blobId": blob, "mailboxIds": {inbox: True}}}}, "i"]])
        email = imported["created"]["big"]["id"]
        [(_, got, _)] = yield call([["Email/get", {
            "accountId": "a1", "ids": [email],
            "properties": ["subject", "size", "attachments", "preview"]}, "g"]])
        [found] = got["list"]
        self.assertEqual(found["subject"], "A large one")
        self.assertEqual(found["preview"], "See the attachment.")
        self.assertEqual(found["attachments"][0]["size"], ATTACHMENT // 768 * 768)
        growth = peak_memory(transport.pid) - before
        self.assertLess(growth, PEAK_GROWTH, f"peak memory grew by {growth / 2**20:.0f} MiB")
        transport.signalProcess("TERM")
        yield child.ended
