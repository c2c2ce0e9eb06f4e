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
from stalwart_tw.store.batch import WriteBatch
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
  const events = await fetch(session.eventSourceUrl.replace("{types}", "*")
      .replace("{closeafter}", "state").replace("{ping}", "0"),
      {headers: {Authorization: auth}});
  const reader = events.body.getReader();
  const decoder = new TextDecoder();
  let text = decoder.decode((await reader.read()).value);
  await fetch("/ready", {method: "POST"});
  for (;;) {
    const chunk = await reader.read();
    if (chunk.done) break;
    text += decoder.decode(chunk.value);
  }
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
        self.ready = defer.Deferred()
        self.report = defer.Deferred()

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return self.page.encode()

    def render_POST(self, request):
        if request.path == b"/ready" and not self.ready.called:
            self.ready.callback(None)
        elif request.path == b"/report" and not self.report.called:
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
        """The page reads the Session, echoes, round-trips a blob and hears a state event."""
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

        yield page.ready
        yield service.node.commit(WriteBatch().log_change(admin.id, "Email", "m1", "created"))
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
