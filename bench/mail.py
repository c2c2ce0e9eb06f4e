"""
JMAP Mail over HTTP: python -m bench.mail [messages] [samples]

Starts a node with `twistd -n stalwart` on a free loopback port, makes a
deterministic corpus of MESSAGES realistic messages (10,000 by default:
threads of replies, multipart/alternative, attachments, 1-50 KB), and over
one keep-alive connection:

- imports them: each message uploaded, then Email/import of 50 at a time
  (the node runs with mail-import-max-items 50), and reports messages per
  second (parsed and full-text indexed in the same transaction);
- runs each scenario SAMPLES times (200 by default) and prints p50 and p95:
  (a) Email/query inMailbox sorted by receivedAt desc, limit 50,
      calculateTotal, with a back-referenced Email/get of list properties;
  (b) the same with a text condition on a common word (in about 30% of the
      messages) and on a rare one (under 1%);
  (c) Email/get of 50 random ids with fetchTextBodyValues;
  (d) Email/set toggling $seen on 50 ids;
  (e) Thread/get of 50 ids;
  (f) Email/changes from the state before the last (d), after (d) ran
      SAMPLES times (50 changes returned);
  (g) Mailbox/get of all;
- and the node's resident memory (VmRSS) at the end.
"""

import base64
import json
import random
import sys
import tempfile
import time

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from bench.core import SECRET, _response_length, free_port, percentile, spawn_node
from stalwart_tw.jmap.ids import encode_id

WORDS = (
    "meeting project report budget schedule review team update office client plan "
    "numbers quarter design launch contract travel lunch notes draft agenda call "
    "weekend family photos garden dinner music book coffee train ticket friday "
    "monday morning evening question answer idea proposal change issue server "
    "customer support order delivery payment account price offer market sales"
).split()
COMMON = "invoice"   # in about 30% of the messages
RARE = "zanzibar"    # in under 1%
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]
LIST_PROPERTIES = ["threadId", "mailboxIds", "keywords", "hasAttachment", "from", "subject",
                   "receivedAt", "size", "preview"]


def _sentence(rng, words=12):
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _text(rng, size):
    lines, total = [], 0
    while total < size:
        line = _sentence(rng, rng.randint(6, 14))
        lines.append(line)
        total += len(line) + 2
    return lines


def corpus(count, seed=8621):
    """
    @return: an iterator of C{count} messages (bytes), deterministic for a
        seed, made as they are taken (100,000 would not fit in memory).
    """
    rng = random.Random(seed)
    subjects = []
    for number in range(count):
        body_size = int(rng.triangular(800, 48000, 3000))
        lines = _text(rng, body_size)
        if rng.random() < 0.3:
            lines.insert(rng.randrange(len(lines)), f"Please find the {COMMON} below.")
        if rng.random() < 0.006:
            lines.insert(rng.randrange(len(lines)), f"Greetings from {RARE}.")
        headers = [
            f"From: Sender {number % 97} <sender{number % 97}@example.com>",
            "To: Jane <jane@example.org>",
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime(1.7e9 + number * 60))}",
            f"Message-ID: <m{number}@bench.example>",
            "MIME-Version: 1.0",
        ]
        if subjects and rng.random() < 0.4:
            parent_number, subject = rng.choice(subjects[-200:])
            headers += [f"Subject: Re: {subject}",
                        f"In-Reply-To: <m{parent_number}@bench.example>",
                        f"References: <m{parent_number}@bench.example>"]
        else:
            subject = _sentence(rng, 5)[:-1]
            subjects.append((number, subject))
            headers.append(f"Subject: {subject}")
        text = "\r\n".join(lines) + "\r\n"
        kind = rng.random()
        if kind < 0.55:
            headers.append("Content-Type: text/plain; charset=utf-8")
            body = text
        else:
            boundary = f"b{number}"
            html = "<html><body>" + "".join(f"<p>{line}</p>" for line in lines) + "</body></html>"
            parts = [
                f"--{boundary}\r\nContent-Type: multipart/alternative; boundary=a{number}\r\n\r\n"
                f"--a{number}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
                f"--a{number}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n"
                f"--a{number}--\r\n"
            ]
            if kind > 0.8:
                attachment = base64.encodebytes(rng.randbytes(rng.randint(500, 12000))).decode()
                parts.append(
                    f"--{boundary}\r\nContent-Type: application/pdf; name=\"doc{number}.pdf\"\r\n"
                    f"Content-Disposition: attachment; filename=\"doc{number}.pdf\"\r\n"
                    f"Content-Transfer-Encoding: base64\r\n\r\n{attachment}"
                )
            headers.append(f"Content-Type: multipart/mixed; boundary={boundary}")
            body = "\r\n".join(parts) + f"--{boundary}--\r\n"
        yield ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


class Connection(protocol.Protocol):
    """One keep-alive connection: a request, its whole answer, the next."""

    def __init__(self, port):
        self._port = port
        self._buffer = b""
        self._waiting = None
        token = base64.b64encode(f"admin:{SECRET}".encode()).decode()
        self._authorization = f"Authorization: Basic {token}\r\n"

    def dataReceived(self, data):
        self._buffer += data
        consumed = _response_length(self._buffer)
        if consumed is not None and self._waiting is not None:
            response, self._buffer = self._buffer[:consumed], self._buffer[consumed:]
            waiting, self._waiting = self._waiting, None
            waiting.callback(response)

    def post(self, path, body, content_type="application/json"):
        self._waiting = defer.Deferred()
        self.transport.write(
            (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self._port}\r\n{self._authorization}"
             f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            + body
        )
        return self._waiting.addCallback(_body)

    async def call(self, calls):
        answer = await self.post("/jmap/", json.dumps({"using": USING, "methodCalls": calls}).encode())
        responses = json.loads(answer)["methodResponses"]
        for name, arguments, _ in responses:
            if name == "error":
                raise RuntimeError(f"method error: {arguments}")
        return responses


def _body(response):
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 2"):
        raise RuntimeError(response[:300].decode(errors="replace"))
    return body


async def timed(samples, action):
    latencies = []
    for sample in range(samples):
        started = time.perf_counter()
        await action(sample)
        latencies.append(time.perf_counter() - started)
    return latencies


def report(label, latencies):
    print(f"{label}: p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
          f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms ({len(latencies)} samples)")


def _rss(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


async def run(count, samples):
    port = free_port()
    messages = corpus(count)
    with tempfile.TemporaryDirectory() as folder:
        node, process = spawn_node(folder, port, "--mail-import-max-items=50")
        try:
            await node.ready
            connection = Connection(port)
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), connection)
            await measure(connection, messages, count, samples, process.pid)
        finally:
            process.signalProcess("TERM")
            await node.ended


async def measure(connection, messages, count, samples, pid):
    account = "a1"
    [(_, boxes, _)] = await connection.call([["Mailbox/get", {"accountId": account, "ids": None}, "m"]])
    inbox = next(box["id"] for box in boxes["list"] if box["role"] == "inbox")
    started = time.perf_counter()
    uploading, volume, making = 0.0, 0, 0.0
    for start in range(0, count, 50):
        emails = {}
        began = time.perf_counter()
        batch = [next(messages) for _ in range(min(50, count - start))]
        making += time.perf_counter() - began
        volume += sum(map(len, batch))
        began = time.perf_counter()
        for index, raw in enumerate(batch):
            uploaded = json.loads(await connection.post(
                f"/jmap/upload/{account}/", raw, "message/rfc822"))
            emails[f"k{index}"] = {"blobId": uploaded["blobId"], "mailboxIds": {inbox: True}}
        uploading += time.perf_counter() - began
        [(_, imported, _)] = await connection.call(
            [["Email/import", {"accountId": account, "emails": emails}, "i"]])
        if imported.get("notCreated"):
            raise RuntimeError(f"import refused: {imported['notCreated']}")
    # The client's making of the corpus is not the server's time.
    elapsed = time.perf_counter() - started - making
    print(f"corpus: {count} messages, {volume / 1e6:.1f} MB")
    print(f"import (upload + Email/import of 50): {count / elapsed:.0f} messages/s "
          f"(per message {uploading / count * 1e3:.2f} ms upload, "
          f"{(elapsed - uploading) / count * 1e3:.2f} ms import)")

    rng = random.Random(1)
    ids = [encode_id("e", number) for number in range(1, count + 1)]

    def listing(condition):
        return [
            ["Email/query", {"accountId": account, "filter": condition,
                             "sort": [{"property": "receivedAt", "isAscending": False}],
                             "limit": 50, "calculateTotal": True}, "q"],
            ["Email/get", {"accountId": account, "properties": LIST_PROPERTIES,
                           "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"}}, "g"],
        ]

    async def query(condition):
        await connection.call(listing(condition))

    report("(a) Email/query inMailbox + Email/get of 50",
           await timed(samples, lambda _: query({"inMailbox": inbox})))
    report(f"(b) the same with text '{COMMON}' (~30%)",
           await timed(samples, lambda _: query({"inMailbox": inbox, "text": COMMON})))
    report(f"(b) the same with text '{RARE}' (<1%)",
           await timed(samples, lambda _: query({"inMailbox": inbox, "text": RARE})))
    report("(c) Email/get of 50 ids with fetchTextBodyValues", await timed(
        samples, lambda _: connection.call([["Email/get", {
            "accountId": account, "ids": rng.sample(ids, 50), "fetchTextBodyValues": True}, "g"]])))
    states = []

    async def toggle(sample):
        [(_, answer, _)] = await connection.call([["Email/set", {
            "accountId": account,
            "update": {i: {"keywords/$seen": True if sample % 2 == 0 else None}
                       for i in rng.sample(ids, 50)}}, "s"]])
        states.append(answer["oldState"])

    report("(d) Email/set toggling $seen on 50 ids", await timed(samples, toggle))
    # About six in ten messages start a thread; the first half of the
    # thread numbers all exist.
    threads = [encode_id("t", n) for n in range(1, 1 + len(ids) // 2)]
    report("(e) Thread/get of 50 ids", await timed(samples, lambda _: connection.call([[
        "Thread/get", {"accountId": account, "ids": rng.sample(threads, 50)}, "t"]])))
    report("(f) Email/changes of the last Email/set (50 changes)", await timed(
        samples, lambda _: connection.call([["Email/changes", {
            "accountId": account, "sinceState": states[-1]}, "c"]])))
    report("(g) Mailbox/get of all", await timed(samples, lambda _: connection.call([[
        "Mailbox/get", {"accountId": account, "ids": None}, "m"]])))
    workers = _children(pid)
    print(f"node memory: {_rss(pid):.0f} MB resident, and "
          f"{sum(map(_rss, workers)):.0f} MB in its {len(workers)} parsing processes")


def main(reactor_, count="10000", samples="200"):
    return defer.ensureDeferred(run(int(count), int(samples)))


if __name__ == "__main__":
    from twisted.internet.task import react

    react(main, sys.argv[1:])
