"""
The Raft core's own cost: python -m bench.raft_core [seconds]

 1. Entries committed per second by a 3-node cluster of cores in memory
    (no I/O, messages handed over at once), 1 KB entries, proposed in
    batches of 64 (as the node batches what arrives in one turn), for
    SECONDS (3 by default).
 2. Simulated schedules per second (tests/cluster/sim.py, 300 steps, 3, 5
    and 7 nodes in turn): how fast the simulator searches for bugs.

The durable log's fsync'd appends are measured by bench.raft_log.
"""

import random
import sys
import time
from collections import deque

from stalwart_tw.cluster.raft import LEADER, Config, Persist, RaftCore, Send

ENTRY = b"x" * 1024
ROUND = 64


def in_memory_cluster():
    ids = ["n1", "n2", "n3"]
    config = Config(frozenset(ids))
    cores = {i: RaftCore(i, config, random.Random(i), 1.0, in_flight_max=256) for i in ids}
    queue = deque()

    def run(node, actions):
        for action in actions:
            if isinstance(action, Send):
                queue.append(action.message)
            elif isinstance(action, Persist):
                pass  # memory only: what is measured is the core

    def drain():
        while queue:
            message = queue.popleft()
            run(message.target, cores[message.target].step(message))

    run("n1", cores["n1"].tick(5.0))
    drain()
    assert cores["n1"].role == LEADER
    return cores, run, drain


def committed_per_second(seconds):
    cores, run, drain = in_memory_cluster()
    leader = cores["n1"]
    start_index = leader.commit_index
    started = time.perf_counter()
    deadline = started + seconds
    now = 5.0
    while time.perf_counter() < deadline:
        _, actions = leader.propose_batch([ENTRY] * ROUND)
        run("n1", actions)
        drain()
        now += 0.01
        for node_id, core in cores.items():
            run(node_id, core.tick(now))
        drain()
    elapsed = time.perf_counter() - started
    return (leader.commit_index - start_index) / elapsed


def schedules_per_second(count):
    from tests.cluster.sim import Simulation

    started = time.perf_counter()
    for run in range(count):
        Simulation(10_000 + run, (3, 5, 7)[run % 3], 300).run()
    return count / (time.perf_counter() - started)


def main(seconds="3"):
    seconds = float(seconds)
    rate = committed_per_second(seconds)
    print(f"Raft core, 3 nodes in memory, 1 KB entries: {rate:,.0f} entries committed "
          f"per second ({ROUND} proposals per batch)")
    count = max(int(seconds * 30), 30)
    print(f"Simulator: {schedules_per_second(count):,.1f} schedules per second "
          f"(300 steps; 3, 5 and 7 nodes; {count} schedules)")


if __name__ == "__main__":
    main(*sys.argv[1:])
