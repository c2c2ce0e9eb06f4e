"""
Commit throughput of a node running alone: python -m bench.commit [count]

Commits batches (one principal row and one change-log record each) through
LocalNode.commit, first one at a time, then with 64 in flight, and prints
batches per second and latency percentiles of the median of three rounds. Every commit is fsync'd
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


async def measure(node, in_flight, numbers, count):
    latencies = []
    started = time.perf_counter()

    async def worker():
        for number in numbers:
            await timed_commit(node, number, latencies)

    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(in_flight)])
    return count / (time.perf_counter() - started), latencies


async def run(count, rounds=3):
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        await store.open()
        node = LocalNode(store)
        await node.startService()
        first = 1
        for label, in_flight in (("sequential", 1), ("64 in flight", 64)):
            # The disk's fsync time varies from run to run: report the
            # median of several rounds.
            results = []
            for _ in range(rounds):
                numbers = iter(range(first, first + count))
                first += count
                results.append(await measure(node, in_flight, numbers, count))
            rate, latencies = sorted(results, key=lambda result: result[0])[rounds // 2]
            print(
                f"commit {label}: {rate:,.0f} batches/s, "
                f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms "
                f"(median of {rounds} rounds of {count} batches)"
            )
        await node.stopService()
        await store.close()


def main(reactor, count="2000"):
    return defer.ensureDeferred(run(int(count)))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
