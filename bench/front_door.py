"""
The front door under attack: python -m bench.front_door [seconds] [attackers]

Starts a node with `twistd -n stalwart` on a free loopback port, uploads a
300 KB blob as the admin, then measures the blob's download, one request
after another on one keep-alive connection by the (already logged-in)
admin, for SECONDS (10 by default):

 1. alone;
 2. while ATTACKERS (64 by default) connections send requests with wrong
    passwords as fast as they are answered.

Round 2 runs twice: with the default settings (the failed-login limit
answers the attackers 429 before any password check), and with
rate-limit-auth raised out of reach, so that only the bounded Argon2 pool
stands between them and the download. Prints p50 and p99 of the download
and what the attackers were answered. Target: p99 under attack within 3x of
p99 alone, and the attackers answered 429 once past the limit.
"""

import base64
import os
import sys
import tempfile
import time
from collections import Counter

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from bench.core import (
    KeepAliveClient,
    _get,
    _post,
    _response_length,
    free_port,
    percentile,
    spawn_node,
)

BLOB_SIZE = 300 * 1024


class Attacker(protocol.Protocol):
    """Sends a wrong password again as soon as each answer arrives."""

    def __init__(self, request, deadline, answers):
        self._request = request
        self._deadline = deadline
        self._answers = answers
        self._buffer = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self._request)

    def dataReceived(self, data):
        self._buffer += data
        while True:
            consumed = _response_length(self._buffer)
            if consumed is None:
                return
            self._answers[self._buffer[9:12].decode()] += 1
            closing = b"connection: close" in self._buffer[:consumed].lower()
            self._buffer = self._buffer[consumed:]
            if closing or time.perf_counter() >= self._deadline:
                self.transport.loseConnection()
                return
            self.transport.write(self._request)

    def connectionLost(self, reason):
        self.done.callback(None)


async def _download_round(port, seconds, download):
    latencies = []
    client = KeepAliveClient([download], latencies, time.perf_counter() + seconds)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    errors = await client.done
    return latencies, errors


async def _attack(port, seconds, attackers, answers):
    token = base64.b64encode(b"admin:not-the-password").decode()
    request = (
        f"GET /jmap/session HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Basic {token}\r\n\r\n"
    ).encode()
    deadline = time.perf_counter() + seconds
    clients = []
    for _ in range(attackers):
        client = Attacker(request, deadline, answers)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        clients.append(client)
    # Attackers whose connection was closed come back at once, until the end.
    while time.perf_counter() < deadline:
        finished = await defer.DeferredList([c.done for c in clients], fireOnOneCallback=True)
        index = finished[1]
        if time.perf_counter() >= deadline:
            break
        client = Attacker(request, deadline, answers)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        clients[index] = client
    await defer.DeferredList([c.done for c in clients])


def _line(label, latencies, errors):
    return (
        f"{label}: {len(latencies)} downloads, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, {errors} errors"
    )


async def one_node(seconds, attackers, extra_arguments, label):
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        node, process = spawn_node(folder, port, *extra_arguments)
        try:
            await node.ready
            from blake3 import blake3

            from stalwart_tw.jmap.session import account_id

            data = os.urandom(BLOB_SIZE)
            account = account_id(1)
            upload = _post(port, f"/jmap/upload/{account}/", data, "application/octet-stream")
            await _download_round(port, 0.2, upload)
            download = _get(port, f"/jmap/download/{account}/{blake3(data).hexdigest()}/b.bin")
            await _download_round(port, 1, download)
            alone, errors = await _download_round(port, seconds, download)
            print(_line(f"{label}, alone", alone, errors))
            answers = Counter()
            attack = defer.ensureDeferred(_attack(port, seconds + 1, attackers, answers))
            attacked, errors = await _download_round(port, seconds, download)
            await attack
            print(_line(f"{label}, {attackers} attackers", attacked, errors))
            told = ", ".join(f"{count:,} x {code}" for code, count in sorted(answers.items()))
            ratio = percentile(attacked, 0.99) / percentile(alone, 0.99)
            print(f"{label}: attackers were answered {told}; p99 under attack / alone = {ratio:.2f}")
        finally:
            process.signalProcess("TERM")
            await node.ended


async def run(seconds, attackers):
    await one_node(seconds, attackers, [], "default settings")
    await one_node(
        seconds, attackers, ["--rate-limit-auth=1000000000/1"], "no failed-login limit"
    )


def main(reactor_, seconds="10", attackers="64"):
    return defer.ensureDeferred(run(float(seconds), int(attackers)))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
