"""
Commit throughput of a node running alone: python -m bench.commit [count]

Commits batches (one principal row and one change-log record each) through
LocalNode.commit, first one at a time, then with 64 in flight, and prints
batches per second and latency percentiles. Every commit is fsync'd
(synchronous=FULL), so the figures measure the disk as much as the code.
"""

import sys
import tempfile
import time

from twisted.internet import defer, task

from stalwart_tw.cluster.node import LocalNode
from stalwart_tw.store.batch import WriteBatch
from stalwart_tw.store.engine import Store


def make_batch(number):
    batch = WriteBatch()
    batch.insert(
        "principals", id=number, kind="individual", name=f"user{number}", quota=0, created_at=0
    )
    batch.log_change(number % 50, "Principal", str(number), "created")
    return batch


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def timed_commit(node, number, latencies):
    started = time.perf_counter()
    await node.commit(make_batch(number))
    latencies.append(time.perf_counter() - started)


async def run(count):
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        await store.open()
        node = LocalNode(store)
        await node.startService()
        for label, in_flight, first in (("sequential", 1, 1), ("64 in flight", 64, count + 1)):
            latencies = []
            started = time.perf_counter()
            numbers = iter(range(first, first + count))

            async def worker():
                for number in numbers:
                    await timed_commit(node, number, latencies)

            await defer.gatherResults(
                [defer.ensureDeferred(worker()) for _ in range(in_flight)]
            )
            elapsed = time.perf_counter() - started
            print(
                f"commit {label}: {count / elapsed:,.0f} batches/s, "
                f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms ({count} batches)"
            )
        await node.stopService()
        await store.close()


def main(reactor, count="2000"):
    return defer.ensureDeferred(run(int(count)))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
