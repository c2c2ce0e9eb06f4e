"""
Principal/set of many creates: python -m bench.principal_set [seconds] [per_call]

Two figures, each for SECONDS (10 by default) of Principal/set calls one
after another, each creating PER_CALL (50 by default) new individuals with
no secret:

 - in this process, straight through the method and the writer on a store
   of its own: the cost of building one batch for the call and committing
   it (one fsync whatever the size of the call);
 - over HTTP to a node started with `twistd -n stalwart`, one keep-alive
   connection (the admin's login stays cached: the calls change other
   principals).
"""

import itertools
import json
import sys
import tempfile
import time

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from bench.core import SECRET, _api, _response_length, free_port, percentile, spawn_node

USING = ("urn:ietf:params:jmap:core", "urn:ietf:params:jmap:principals")


def set_requests(port, per_call, count):
    from stalwart_tw.jmap.session import account_id

    names = (f"user{number}" for number in itertools.count())
    for _ in range(count):
        create = {f"k{n}": {"type": "individual", "name": next(names)} for n in range(per_call)}
        yield _api(port, [["Principal/set", {"accountId": account_id(1), "create": create}, "c"]],
                   USING)


class OneAtATime(protocol.Protocol):
    """Sends each request once the answer to the one before has arrived."""

    def __init__(self, requests, deadline, per_call):
        self._requests = requests
        self._deadline = deadline
        self._per_call = per_call
        self._buffer = b""
        self._sent_at = 0.0
        self.latencies = []
        self.errors = 0
        self.done = defer.Deferred()

    def connectionMade(self):
        self._send()

    def _send(self):
        request = next(self._requests, None)
        if request is None or time.perf_counter() >= self._deadline:
            self.transport.loseConnection()
            return
        self._sent_at = time.perf_counter()
        self.transport.write(request)

    def dataReceived(self, data):
        self._buffer += data
        consumed = _response_length(self._buffer)
        if consumed is None:
            return
        answer, self._buffer = self._buffer[:consumed], self._buffer[consumed:]
        self.latencies.append(time.perf_counter() - self._sent_at)
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        created = body["methodResponses"][0][1].get("created") or {}
        if not answer.startswith(b"HTTP/1.1 200") or len(created) != self._per_call:
            self.errors += 1
        self._send()

    def connectionLost(self, reason):
        self.done.callback(None)


async def in_process(seconds, per_call):
    from stalwart_tw.cluster.node import LocalNode
    from stalwart_tw.jmap.dispatch import CallContext
    from stalwart_tw.jmap.principal import PrincipalType
    from stalwart_tw.jmap.session import account_id
    from stalwart_tw.jmap.standard import standard_set
    from stalwart_tw.store.directory import Directory
    from stalwart_tw.store.engine import Store
    from stalwart_tw.writer import AccountWriter

    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder, 4)
        await store.open()
        node = LocalNode(store)
        await node.startService()
        writer = AccountWriter(store, node)
        directory = Directory(store, writer)
        admin, _ = await directory.ensure_admin(SECRET)
        principals = PrincipalType(directory, store)
        context = CallContext(admin, USING, {}, (admin.id,))
        names = (f"user{number}" for number in itertools.count())
        latencies, first_index = [], node.applied_index
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            create = {f"k{n}": {"type": "individual", "name": next(names)}
                      for n in range(per_call)}
            started = time.perf_counter()
            await standard_set(principals, writer, 10_000, context,
                               {"accountId": account_id(admin.id), "create": create})
            latencies.append(time.perf_counter() - started)
        elapsed = sum(latencies)
        print(
            f"Principal/set of {per_call} creates, in process: "
            f"{len(latencies) * per_call / elapsed:,.0f} principals per second, "
            f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
            f"p95 {percentile(latencies, 0.95) * 1000:.1f} ms, "
            f"{(node.applied_index - first_index) / len(latencies):g} commits per call"
        )
        await node.stopService()
        await store.close()


async def run(seconds, per_call):
    await in_process(seconds, per_call)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        node, process = spawn_node(folder, port)
        try:
            await node.ready
            requests = set_requests(port, per_call, 1_000_000)
            client = OneAtATime(requests, time.perf_counter() + seconds, per_call)
            started = time.perf_counter()
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            await client.done
            elapsed = time.perf_counter() - started
            calls = len(client.latencies)
            print(
                f"Principal/set of {per_call} creates, over HTTP, 1 connection: "
                f"{calls * per_call / elapsed:,.0f} principals per second, "
                f"{calls / elapsed:,.1f} calls per second, "
                f"p50 {percentile(client.latencies, 0.5) * 1000:.1f} ms, "
                f"p95 {percentile(client.latencies, 0.95) * 1000:.1f} ms, "
                f"{client.errors} errors ({calls} calls in {elapsed:.1f} s)"
            )
        finally:
            process.signalProcess("TERM")
            await node.ended


def main(reactor_, seconds="10", per_call="50"):
    return defer.ensureDeferred(run(float(seconds), int(per_call)))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
