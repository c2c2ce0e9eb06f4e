"""
JMAP Core over HTTP: python -m bench.core [seconds] [connections,...]

Starts a node with `twistd -n stalwart` on a free loopback port, then, from
this one client process, keeps CONNECTIONS keep-alive HTTP connections busy
(each count of a comma-separated list in turn; 1 and 4 by default)
for SECONDS each round with each scenario (a 16-call Core/echo request;
Principal/get of one id; an upload of 1 MB followed by its download), each
connection sending its next request as soon as the previous answer has
arrived, and prints operations per second with p50 and p95 latency.

The client is a minimal HTTP/1.1 protocol (fixed request bytes, answers
framed by Content-Length) so that the figures measure the server rather
than a client library.
"""

import base64
import itertools
import json
import os
import re
import socket
import sys
import tempfile
import time

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "the-bench-secret"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(port, path, body, content_type="application/json"):
    token = base64.b64encode(f"admin:{SECRET}".encode()).decode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Basic {token}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _get(port, path):
    token = base64.b64encode(f"admin:{SECRET}".encode()).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Basic {token}\r\n\r\n"
    ).encode()


def _api(port, calls, using=("urn:ietf:params:jmap:core",)):
    body = json.dumps({"using": list(using), "methodCalls": calls}).encode()
    return _post(port, "/jmap/", body)


def echo_requests(port):
    calls = [["Core/echo", {"call": n, "hello": "world"}, f"c{n}"] for n in range(16)]
    return [_api(port, calls)]


def principal_get_requests(port):
    # The admin is the first principal the node creates: account and
    # principal ids of number 1.
    from stalwart_tw.jmap.principal import principal_id
    from stalwart_tw.jmap.session import account_id

    call = ["Principal/get", {"accountId": account_id(1), "ids": [principal_id(1)]}, "c"]
    using = ("urn:ietf:params:jmap:core", "urn:ietf:params:jmap:principals")
    return [_api(port, [call], using)]


def upload_download_requests(port):
    from blake3 import blake3

    from stalwart_tw.jmap.session import account_id

    data = os.urandom(1024 * 1024)
    account = account_id(1)
    return [
        _post(port, f"/jmap/upload/{account}/", data, "application/octet-stream"),
        _get(port, f"/jmap/download/{account}/{blake3(data).hexdigest()}/b.bin"),
    ]


SCENARIOS = (
    ("Core/echo x16", echo_requests),
    ("Principal/get of one id", principal_get_requests),
    ("upload + download of 1 MB (2 requests)", upload_download_requests),
)


class Node(protocol.ProcessProtocol):
    """The server under test, as a child process."""

    def __init__(self):
        self.output = b""
        self.ready = defer.Deferred()
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output += data
        if not self.ready.called and b"node ready" in self.output:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.output.decode(errors="replace")))
        self.ended.callback(None)


class KeepAliveClient(protocol.Protocol):
    """Sends one request, waits for its whole answer, sends the next."""

    def __init__(self, requests, latencies, deadline):
        self._requests = requests
        self._next = 0
        self._latencies = latencies
        self._deadline = deadline
        self._buffer = b""
        self._sent_at = 0.0
        self.done = defer.Deferred()
        self.errors = 0

    def connectionMade(self):
        self._send()

    def _send(self):
        # Requests go in turn; a latency is one whole turn (upload then
        # download counts once).
        if self._next == 0:
            self._sent_at = time.perf_counter()
        self.transport.write(self._requests[self._next])

    def dataReceived(self, data):
        self._buffer += data
        while True:
            consumed = _response_length(self._buffer)
            if consumed is None:
                return
            if not self._buffer.startswith(b"HTTP/1.1 2"):
                self.errors += 1
            self._buffer = self._buffer[consumed:]
            self._next = (self._next + 1) % len(self._requests)
            if self._next:
                self._send()
                continue
            now = time.perf_counter()
            self._latencies.append(now - self._sent_at)
            if now >= self._deadline:
                self.transport.loseConnection()
                return
            self._send()

    def connectionLost(self, reason):
        self.done.callback(self.errors)


def _response_length(buffer):
    # Bytes of the first whole response in buffer (Content-Length or
    # chunked framing), or None while it is incomplete.
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buffer[:end]
    match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    if match:
        total = end + 4 + int(match.group(1))
        return total if len(buffer) >= total else None
    if not re.search(rb"transfer-encoding: *chunked", head, re.IGNORECASE):
        return end + 4
    position = end + 4
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(buffer[position:line_end].split(b";")[0], 16)
        position = line_end + 2 + size + 2
        if len(buffer) < position:
            return None
        if size == 0:
            return position


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def load(port, seconds, connections, requests):
    latencies = []
    deadline = time.perf_counter() + seconds
    clients = []
    for _ in range(connections):
        client = KeepAliveClient(requests, latencies, deadline)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        clients.append(client)
    started = time.perf_counter()
    errors = sum(await defer.gatherResults([client.done for client in clients]))
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, errors


def spawn_node(folder, port, *extra_arguments):
    """
    Start `twistd -n stalwart` with its data in C{folder} and HTTP on
    C{port}, the admin's password L{SECRET}.

    @return: C{(Node, process transport)}.
    """
    node = Node()
    arguments = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "stalwart", f"--db-path={folder}/data",
        f"--jmap-port={port}", "--manhole-port=0", f"--admin-secret={SECRET}",
        # Measuring the server, not its rate limit: one client sends thousands.
        "--rate-limit-authenticated=1000000000/1", *extra_arguments,
    ]
    process = reactor.spawnProcess(
        node, sys.executable, arguments, env=dict(os.environ, PYTHONPATH=REPOSITORY),
        path=folder,
    )
    return node, process


async def run(seconds, connection_counts):
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        node, process = spawn_node(folder, port)
        try:
            await node.ready
            for (label, make_requests), connections in itertools.product(
                SCENARIOS, connection_counts
            ):
                requests = make_requests(port)
                await load(port, 1, connections, requests)  # warm-up
                rounds = [await load(port, seconds, connections, requests) for _ in range(3)]
                rate, latencies, errors = sorted(rounds, key=lambda r: r[0])[1]
                print(
                    f"{label}, {connections} keep-alive connection(s): "
                    f"{rate:,.0f} per second, p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
                    f"p95 {percentile(latencies, 0.95) * 1000:.2f} ms, {errors} errors "
                    f"(median of 3 rounds of {seconds:g} s)"
                )
        finally:
            process.signalProcess("TERM")
            await node.ended


def main(reactor_, seconds="5", connections="1,4"):
    counts = [int(count) for count in connections.split(",")]
    return defer.ensureDeferred(run(float(seconds), counts))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
