"""
Durable Raft log appends: python -m bench.raft_log [seconds]

Appends 1 KB entries through RaftLog.save, one save at a time (as the node
does: the next persist waits for the previous fsync), first one entry per
save, then 64 entries per save (batched), each for the given number of
seconds (default 3), and prints entries and saves per second with save
latency percentiles. Every save is fsync'd (synchronous=FULL), so the figures
measure the disk as much as the code.
"""

import os
import sys
import tempfile
import time

from twisted.internet import defer, task

from stalwart_tw.cluster.log import Entry, RaftLog
from stalwart_tw.store.engine import Store

ENTRY_SIZE = 1024


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def measure(raft_log, first_index, per_save, seconds):
    """
    Save batches of C{per_save} entries back to back for C{seconds}.

    @return: C{(entries appended, elapsed seconds, save latencies)}.
    """
    data = os.urandom(ENTRY_SIZE)
    index, latencies = first_index, []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = [Entry(1, index + offset, data) for offset in range(per_save)]
        before = time.perf_counter()
        await raft_log.save(append=batch)
        latencies.append(time.perf_counter() - before)
        index += per_save
    return index - first_index, time.perf_counter() - started, latencies


async def run(seconds):
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        await store.open()
        raft_log = RaftLog(store)
        next_index = 1
        for label, per_save in (("1 entry per save", 1), ("64 entries per save", 64)):
            appended, elapsed, latencies = await measure(raft_log, next_index, per_save, seconds)
            next_index += appended
            print(
                f"raft log, {label}: {appended / elapsed:,.0f} entries/s, "
                f"{len(latencies) / elapsed:,.0f} saves/s, "
                f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms "
                f"({appended} entries of {ENTRY_SIZE} bytes in {elapsed:.1f} s)"
            )
        await store.close()


def main(reactor, seconds="3"):
    return defer.ensureDeferred(run(float(seconds)))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
