"""
Cluster transport: python -m bench.cluster_transport [seconds]

Measures the pieces nodes of a cluster talk to each other with:

 1. RPC round trips, pipelined on one connection: starts a node with
    `twistd -n stalwart` on free loopback ports (JMAP, and RPC/gossip), then
    from this one process keeps 64 `gossip.probe` calls in flight on one
    authenticated TLS connection (the node's own PeerConnections client,
    with the same encryption-key) for SECONDS (5 by default), and prints
    calls per second with p50 and p95 latency.
 2. The same one call at a time (each sent when the previous answer has
    arrived).
 3. Bytes per gossip packet: in this process, a Gossip knowing 5, 50 and 500
    members (long host names, large counters) builds PING packets over
    several rounds; prints the largest and mean sealed size, how many
    member summaries they carry, and whether all fit 1,400 bytes.
 4. Failure detection: starts 3 nodes (each seeded with the previous one),
    waits until each has logged the other two as joined, SIGKILLs one, and
    prints the time until each survivor logs it offline (default
    peer-ping-interval), the slowest first.

Times of log lines are when this process reads them from the nodes' output.
"""

import contextlib
import os
import re
import socket
import statistics
import sys
import tempfile
import time

from twisted.internet import defer, error, protocol, reactor, task

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "the-bench-secret"
KEY = "bench-cluster-encryption-key"
IN_FLIGHT = 64
PACKET_ROUNDS = 64
MEMBER_COUNTS = (5, 50, 500)


def free_port():
    """A loopback port free for both TCP and UDP."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class Node(protocol.ProcessProtocol):
    """A cluster node under test, as a child process."""

    def __init__(self, name):
        self.name = name
        self.output = b""
        self.running = True
        self.node_id = None
        self.ended = defer.Deferred()
        # (compiled pattern, Deferred) waiting for a line to appear.
        self._waiters = []

    def when(self, pattern):
        """
        A Deferred firing with the time (perf_counter) the output first
        matched C{pattern} (bytes regex), failing if the node ends first.
        """
        waiter = (re.compile(pattern), defer.Deferred())
        self._waiters.append(waiter)
        self._check(time.perf_counter())
        return waiter[1]

    def outReceived(self, data):
        now = time.perf_counter()
        self.output += data
        self._check(now)

    errReceived = outReceived

    def _check(self, now):
        for waiter in list(self._waiters):
            pattern, deferred = waiter
            if pattern.search(self.output):
                self._waiters.remove(waiter)
                deferred.callback(now)

    def processEnded(self, reason):
        self.running = False
        waiters, self._waiters = self._waiters, []
        for pattern, deferred in waiters:
            deferred.errback(RuntimeError(
                f"{self.name} ended before logging {pattern.pattern!r}:\n"
                + self.output.decode(errors="replace")[-3000:]
            ))
        self.ended.callback(None)


async def start_node(name, folder, seed=None):
    """Start a cluster node and wait until it is ready; return (node, process, rpc port)."""
    os.makedirs(folder)
    jmap_port, rpc_port = free_port(), free_port()
    arguments = [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "stalwart", f"--db-path={folder}/data",
        f"--jmap-port={jmap_port}", f"--jmap-url=http://127.0.0.1:{jmap_port}",
        "--manhole-port=0", f"--admin-secret={SECRET}", f"--encryption-key={KEY}",
        "--rpc-advertise-addr=127.0.0.1", "--rpc-bind-addr=127.0.0.1",
        f"--rpc-port={rpc_port}",
    ]
    if seed is not None:
        arguments.append(f"--seed-nodes=127.0.0.1:{seed}")
    node = Node(name)
    process = reactor.spawnProcess(
        node, sys.executable, arguments, env=dict(os.environ, PYTHONPATH=REPOSITORY),
        path=folder,
    )
    try:
        await node.when(rb"node ready")
        match = re.search(rb"node ([0-9a-f]{16}) \(generation", node.output)
        if match is None:
            raise RuntimeError(f"{name} logged no node id:\n{node.output.decode()}")
        node.node_id = match.group(1).decode()
    except BaseException:
        await stop(node, process)
        raise
    return node, process, rpc_port


async def stop(node, process, seconds=15):
    """SIGTERM, then SIGKILL if the node is still there after C{seconds}."""
    if not node.running:
        return
    try:
        process.signalProcess("TERM")
    except error.ProcessExitedAlready:
        return
    killer = reactor.callLater(seconds, _kill, process)
    await node.ended
    if killer.active():
        killer.cancel()


def _kill(process):
    # Gone already is as good as killed.
    with contextlib.suppress(error.ProcessExitedAlready):
        process.signalProcess("KILL")


# -- 1 and 2: RPC round trips ----------------------------------------------------


async def rpc_load(rpc, address, seconds, in_flight):
    """Keep C{in_flight} gossip.probe calls going for C{seconds}."""
    latencies = []
    errors = []
    done = defer.Deferred()
    deadline = time.perf_counter() + seconds
    outstanding = [0]

    def send():
        outstanding[0] += 1
        sent_at = time.perf_counter()
        calling = rpc.call(address, "gossip.probe", None)
        calling.addCallbacks(answered, failed, callbackArgs=(sent_at,))

    def answered(result, sent_at):
        now = time.perf_counter()
        latencies.append(now - sent_at)
        if not isinstance(result, dict):
            errors.append(f"unexpected answer {result!r}")
        next_call(now)

    def failed(failure):
        errors.append(failure.getErrorMessage())
        next_call(time.perf_counter())

    def next_call(now):
        outstanding[0] -= 1
        if now < deadline and not errors:
            send()
        elif not outstanding[0]:
            done.callback(None)

    started = time.perf_counter()
    for _ in range(in_flight):
        send()
    await done
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]}")
    return len(latencies) / elapsed, latencies


async def rpc_round_trips(folder, seconds):
    from stalwart_tw.cluster.peers import PeerConnections
    from stalwart_tw.cluster.tls import rpc_tls
    from stalwart_tw.config import load_settings

    node, process, rpc_port = await start_node("node", os.path.join(folder, "rpc-node"))
    rpc = None
    try:
        settings = load_settings(None, {
            "db-path": os.path.join(folder, "client"), "jmap-port": "0",
            "manhole-port": "0", "admin-secret": SECRET, "encryption-key": KEY,
        }, {})
        tls = rpc_tls(settings, os.path.join(folder, "client"))
        rpc = PeerConnections(settings, KEY, tls.client, reactor=reactor)
        address = ("127.0.0.1", rpc_port)
        await rpc.call(address, "gossip.probe", None, timeout=10)  # connect + authenticate
        for label, in_flight in (
            (f"pipelined on one connection ({IN_FLIGHT} in flight)", IN_FLIGHT),
            ("one at a time", 1),
        ):
            await rpc_load(rpc, address, 1, in_flight)  # warm-up
            rate, latencies = await rpc_load(rpc, address, seconds, in_flight)
            print(
                f"RPC round trips (gossip.probe), {label}: {rate:,.0f} per second, "
                f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
                f"p95 {percentile(latencies, 0.95) * 1000:.2f} ms "
                f"({len(latencies):,} calls in {seconds:g} s)",
                flush=True,
            )
    finally:
        if rpc is not None:
            await rpc.close()
        await stop(node, process)


# -- 3: gossip packet size ----------------------------------------------------------


def gossip_packet_sizes():
    from stalwart_tw.cluster.gossip import (
        MAX_PACKET,
        PING,
        Gossip,
        PacketSeal,
        Summary,
        decode_packet,
    )

    big = 2**62  # counters near the largest a summary accepts
    seal = PacketSeal(KEY)
    for count in MEMBER_COUNTS:
        gossip = Gossip(
            os.urandom(8).hex(), big - 1, ("node-0.cluster.example.org", 7911),
            "https://node-0.cluster.example.org", "voter", KEY, 0.5, clock=task.Clock(),
        )
        gossip.epoch, gossip.term, gossip.index = big - 2, big - 3, big - 4
        source = gossip.summary()
        for number in range(1, count + 1):
            gossip._observe(Summary(
                os.urandom(8).hex(), big - number, big - 2 * number, big - 3 * number,
                big - 4 * number, f"node-{number}.cluster.example.org", 7911,
            ), source)
        sizes, carried = [], []
        for _ in range(PACKET_ROUNDS):
            gossip.epoch += 1
            packet = gossip._packet(PING, gossip._sample())
            sizes.append(len(packet))
            carried.append(len(decode_packet(seal.open(packet))[2]))
        fits = "all under" if max(sizes) <= MAX_PACKET else "NOT all under"
        print(
            f"Gossip PING packet, {count} members: largest {max(sizes):,} bytes, "
            f"mean {statistics.mean(sizes):,.0f} bytes sealed, "
            f"{_span(carried)} member summaries each, "
            f"{fits} {MAX_PACKET:,} bytes ({PACKET_ROUNDS} rounds)",
            flush=True,
        )


def _span(values):
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


# -- 4: failure detection -------------------------------------------------------------


async def failure_detection(folder):
    nodes = []
    try:
        seed = None
        for number in range(3):
            name = f"node {number + 1}"
            started = await start_node(name, os.path.join(folder, f"node-{number + 1}"), seed)
            nodes.append(started)
            seed = started[2]
        joined = []
        for node, _, _ in nodes:
            for other, _, _ in nodes:
                if other is not node:
                    joined.append(node.when(
                        rb"cluster: peer " + other.node_id.encode() + rb" at \S+ joined"
                    ))
        await _within(defer.gatherResults(joined, consumeErrors=True), 30, "joined")
        victim, victim_process, _ = nodes[-1]
        survivors = [node for node, _, _ in nodes[:-1]]
        offline = [
            node.when(rb"cluster: peer " + victim.node_id.encode() + rb" at \S+ is offline")
            for node in survivors
        ]
        suspected = [
            node.when(rb"cluster: peer " + victim.node_id.encode() + rb" at \S+ is suspected")
            for node in survivors
        ]
        killed_at = time.perf_counter()
        victim_process.signalProcess("KILL")
        offline_at = await _within(
            defer.gatherResults(offline, consumeErrors=True), 60, "offline"
        )
        suspected_at = await defer.gatherResults(suspected, consumeErrors=True)
        after = [at - killed_at for at in offline_at]
        each = ", ".join(
            f"{node.name} suspected at {s - killed_at:.2f} s, offline at {o - killed_at:.2f} s"
            for node, s, o in zip(survivors, suspected_at, offline_at)
        )
        print(
            f"SIGKILL of 1 of 3 nodes to offline on every survivor "
            f"(peer-ping-interval 500 ms): {max(after):.2f} s ({each})",
            flush=True,
        )
    finally:
        for node, process, _ in reversed(nodes):
            await stop(node, process)


async def _within(deferred, seconds, what):
    timer = reactor.callLater(seconds, deferred.cancel)
    try:
        return await deferred
    except defer.CancelledError:
        raise RuntimeError(f"no '{what}' within {seconds} s") from None
    finally:
        if timer.active():
            timer.cancel()


async def run(seconds):
    with tempfile.TemporaryDirectory() as folder:
        await rpc_round_trips(folder, seconds)
        gossip_packet_sizes()
        await failure_detection(folder)


def main(reactor_, seconds="5"):
    return defer.ensureDeferred(run(float(seconds)))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
