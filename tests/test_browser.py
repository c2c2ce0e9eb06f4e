"""
A real browser as a JMAP client: headless Chromium loads a page from
another origin, which reads the Session with Basic credentials, calls the
API, uploads and downloads a blob and listens to the event source through
fetch(); the page reports what it saw. Skipped where no Chromium is
installed (.ci/run installs Debian's).
"""

import json
import os
import shutil
import socket

from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server

from stalwart_tw.jmap.session import account_id
from tests.support import NodeServiceMixin, node_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html>
<html><body><script>
const base = "%(base)s";
const auth = "Basic " + btoa("admin:the-service-secret");
const report = {};
async function run() {
  const sessionResponse = await fetch(base + "/.well-known/jmap",
                                      {headers: {Authorization: auth}});
  const session = await sessionResponse.json();
  report.username = session.username;
  const accountId = Object.keys(session.accounts)[0];
  report.accountId = accountId;
  const api = await fetch(session.apiUrl, {
    method: "POST",
    headers: {Authorization: auth, "Content-Type": "application/json"},
    body: JSON.stringify({using: ["urn:ietf:params:jmap:core"],
                          methodCalls: [["Core/echo", {ping: "pong"}, "c1"]]})});
  report.echo = (await api.json()).methodResponses[0][1];
  const upload = await fetch(session.uploadUrl.replace("{accountId}", accountId), {
    method: "POST", headers: {Authorization: auth, "Content-Type": "text/plain"},
    body: "hello from the browser"});
  report.uploadStatus = upload.status;
  const blob = await upload.json();
  const download = await fetch(session.downloadUrl.replace("{accountId}", accountId)
      .replace("{blobId}", blob.blobId).replace("{name}", "hello.txt")
      .replace("{type}", "text/plain"), {headers: {Authorization: auth}});
  report.downloaded = await download.text();
  report.disposition = download.headers.get("Content-Disposition");
  const mail = async (calls) => (await (await fetch(session.apiUrl, {
    method: "POST", headers: {Authorization: auth, "Content-Type": "application/json"},
    body: JSON.stringify({using: ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
                          methodCalls: calls})})).json()).methodResponses;
  // The account's mailboxes are made on first use: before listening.
  const boxes = (await mail([["Mailbox/get", {accountId, ids: null}, "b"]]))[0][1].list;
  const inbox = boxes.find(box => box.role === "inbox");
  const events = await fetch(session.eventSourceUrl.replace("{types}", "*")
      .replace("{closeafter}", "state").replace("{ping}", "0"),
      {headers: {Authorization: auth}});
  const reader = events.body.getReader();
  const decoder = new TextDecoder();
  let text = decoder.decode((await reader.read()).value);
  const listening = (async () => {
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      text += decoder.decode(chunk.value);
    }
  })();
  // Mail arrives (an import), and the page reads its mailbox and the email.
  const message = "From: Ann <ann@example.com>\\r\\nSubject: Seen in a browser\\r\\n" +
                  "Message-ID: <browser-1@example.com>\\r\\n\\r\\nHello, browser.\\r\\n";
  const uploaded = await (await fetch(session.uploadUrl.replace("{accountId}", accountId), {
    method: "POST", headers: {Authorization: auth, "Content-Type": "message/rfc822"},
    body: message})).json();
  await mail([["Email/import", {accountId, emails: {m: {
    blobId: uploaded.blobId, mailboxIds: {[inbox.id]: true}}}}, "i"]]);
  const read = await mail([
    ["Email/query", {accountId, filter: {inMailbox: inbox.id}}, "q"],
    ["Email/get", {accountId, "#ids": {resultOf: "q", name: "Email/query", path: "/ids"},
                   properties: ["subject", "from", "bodyValues", "textBody"],
                   fetchTextBodyValues: true}, "g"],
    ["Mailbox/get", {accountId, ids: [inbox.id], properties: ["name", "totalEmails"]}, "m"]]);
  const email = read[1][1].list[0];
  report.subject = email.subject;
  report.body = email.bodyValues[email.textBody[0].partId].value;
  report.inbox = read[2][1].list[0];
  await listening;
  report.events = text;
}
run().catch(error => { report.error = String(error); })
     .finally(() => fetch("/report", {method: "POST", body: JSON.stringify(report)}));
</script></body></html>
"""


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PageSite(resource.Resource):
    """The other origin: serves the page and hears its signals."""

    isLeaf = True

    def __init__(self, page):
        super().__init__()
        self.page = page
        self.report = defer.Deferred()

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self.page.encode()

    def render_POST(self, request):
        if request.path == b"/report" and not self.report.called:
            self.report.callback(json.loads(request.content.read()))
        return b""


class Browser(protocol.ProcessProtocol):
    def __init__(self):
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)


class BrowserTests(NodeServiceMixin, TestCase):
    """
    What a web client on another origin sees.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_page_uses_the_server(self):
        """The page reads the Session, echoes, round-trips a blob, imports and reads mail, and hears its state event."""
        if CHROMIUM is None:
            raise SkipTest("no Chromium here (.ci/run installs Debian's chromium)")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        service = yield self.start(node_settings(self, **{"jmap-port": str(port),
                                                          "jmap-url": base}))
        admin = yield service.directory.get("admin")
        page = PageSite(PAGE % {"base": base})
        listening = reactor.listenTCP(0, server.Site(page), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        browser = self.launch(f"http://127.0.0.1:{listening.getHost().port}/")

        report = yield page.report
        yield self.stop(browser)

        self.assertNotIn("error", report)
        self.assertEqual(report["username"], "admin")
        self.assertEqual(report["echo"], {"ping": "pong"})
        self.assertEqual(report["uploadStatus"], 201)
        self.assertEqual(report["downloaded"], "hello from the browser")
        self.assertIn("hello.txt", report["disposition"])
        self.assertIn("event: state", report["events"])
        self.assertIn(account_id(admin.id), report["events"])
        self.assertIn('"Email"', report["events"])
        self.assertEqual(report["subject"], "Seen in a browser")
        self.assertEqual(report["body"], "Hello, browser.\n")
        self.assertEqual(report["inbox"]["name"], "Inbox")
        self.assertEqual(report["inbox"]["totalEmails"], 1)

    def launch(self, url):
        profile = os.path.abspath(self.mktemp())
        os.makedirs(profile)
        browser = Browser()
        transport = reactor.spawnProcess(browser, CHROMIUM, [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
            url,
        ], env=dict(os.environ))
        browser.transport = transport
        self.addCleanup(self.stop, browser)
        return browser

    def stop(self, browser):
        if browser.ended.called:
            return None
        browser.transport.signalProcess("KILL")
        return browser.ended
