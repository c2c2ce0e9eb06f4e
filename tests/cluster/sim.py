"""
A deterministic simulator of Raft cores on a faulty network.

    python -m tests.cluster.sim --runs N --seed S [--nodes K] [--steps M] [--inject BUG]

Each run draws a schedule from its seed (run i uses seed S + i): message
loss, delay, duplication and reordering; asymmetric partitions; crashes
that keep only what was persisted, including power cuts in the middle of
what a core asked for (the rest of its actions are lost); clock skew and
drift between nodes; membership changes; leadership transfers; and a client
proposing values and asking for reads. After every step the simulator
checks:

 - at most one leader per term;
 - log matching (two logs holding an entry of the same index and term hold
   the same entries up to it), kept incrementally with prefix hashes;
 - leader completeness (a new leader holds every entry committed so far);
 - state machine safety (no two nodes apply different entries at an index);
 - PreVote never changes a term;
 - no read is answered with an index older than a write acknowledged
   before the read was asked (so no deposed leader answers);
and at the end of the run, once the network heals and every node is up:
 - liveness: a leader is elected within a bounded number of election
   timeouts, and a last value proposed is committed and applied everywhere;
 - every value acknowledged as committed is applied, at the same index, by
   every node.

A violation prints the seed and the schedule, shrunk to the events it
needs; the seed alone reproduces it. The last line is "N schedules, V
violations"; the exit status is 1 when V > 0.

--inject runs the same schedules against a deliberately broken core (see
BUGS), to show the checker can fail.
"""

import argparse
import hashlib
import random
import sys
from dataclasses import dataclass

from stalwart_tw.cluster.log import HardState
from stalwart_tw.cluster.raft import (
    CONFIG_PREFIX,
    DATA_PREFIX,
    LEADER,
    Apply,
    Config,
    NotLeader,
    Persist,
    RaftCore,
    ReadReady,
    RoleChanged,
    Send,
    VoteRequest,
)

ELECTION_TIMEOUT = 1.0
STEP = 0.05
# After the faults: this many election timeouts to elect a leader and commit.
LIVENESS_TIMEOUTS = 20


@dataclass(frozen=True)
class Event:
    """One thing the schedule does at a step."""

    step: int
    kind: str
    args: tuple = ()

    def __str__(self):
        return f"step {self.step}: {self.kind} {' '.join(map(str, self.args))}".rstrip()


class Violation(Exception):
    """A property of Raft failed; the message says which and where."""


# -- the broken cores of --inject -------------------------------------------


class CommitOldTerm(RaftCore):
    """Counts replicas for an entry of an earlier term (Figure 8 of the paper)."""

    def _commits_by_counting(self, index):
        return True


class NoPrevoteTermCheck(RaftCore):
    """Lets a pre-vote request move the receiver's term, as a real vote would."""

    def step(self, message):
        if isinstance(message, VoteRequest) and message.pre and message.term > self.term:
            actions = self._become_follower(message.term, None)
            return actions + self._answer_vote(message)
        return super().step(message)


class ApplyUncommitted(RaftCore):
    """Applies what it appended as a follower without waiting for the commit."""

    def _on_append(self, message):
        actions = super()._on_append(message)
        if self.last_index > self.commit_index and self.role != LEADER:
            self.commit_index = self.last_index
            actions += self._apply_committed()
        return actions


class StaleRead(RaftCore):
    """Answers a read index at once, without confirming leadership."""

    def _leader_read(self, context, requester):
        return [ReadReady(context, self.commit_index)]


BUGS = {
    "forget-vote": RaftCore,  # the simulator drops the vote when persisting
    "commit-old-term": CommitOldTerm,
    "no-prevote-term-check": NoPrevoteTermCheck,
    "apply-uncommitted": ApplyUncommitted,
    "stale-read": StaleRead,
}


# -- schedules ---------------------------------------------------------------


# Per step, the chance of each kind of event (the rest: nothing happens).
EVENT_WEIGHTS = (
    ("crash", 0.02),
    ("cut", 0.005),  # a power cut in the middle of a core's actions
    ("restart", 0.02),
    ("crash-leader", 0.005),
    ("bounce", 0.03),  # down and straight back up: only what was persisted remains
    ("partition", 0.015),
    ("heal", 0.015),
    ("isolate-leader", 0.01),  # the leader and a minority, cut off from the rest
    ("bounce-voter", 0.08),  # a node that voted in its term loses power
    ("transfer", 0.005),
    ("membership", 0.005),
    ("propose", 0.13),
    ("read", 0.05),
)


def make_schedule(rng, ids, steps):
    """Draw the faults and client requests of a run."""
    events = []
    for step in range(steps):
        roll = rng.random()
        for kind, weight in EVENT_WEIGHTS:
            if roll < weight:
                events.append(Event(step, kind, _event_arguments(rng, kind, ids, step)))
                break
            roll -= weight
    return events


def _event_arguments(rng, kind, ids, step):
    if kind in ("crash", "restart", "bounce", "transfer", "membership"):
        return (rng.choice(ids),)
    if kind == "cut":
        return (rng.choice(ids), rng.randrange(1, 4))
    if kind == "partition":
        return tuple(sorted((a, b) for a in ids for b in ids if a != b and rng.random() < 0.3))
    if kind in ("isolate-leader", "bounce-voter"):
        return (rng.random(),)
    if kind == "propose":
        return (f"v{step}", rng.random())
    if kind == "read":
        return (rng.choice(ids), f"r{step}")
    return ()


# -- the simulation ------------------------------------------------------------


class Node:
    """A node: its durable state survives crashes, its core does not."""

    def __init__(self, node_id, skew, drift):
        self.id = node_id
        self.skew = skew
        self.drift = drift
        self.hard_state = HardState(0, None)
        self.entries = []
        self.core = None
        self.cut_after = None
        # Index -> entry applied, for this incarnation's state machine.
        self.applied = {}

    def now(self, time):
        return time * (1.0 + self.drift) + self.skew


class Simulation:
    def __init__(self, seed, node_count, steps, bug=None, schedule=None):
        self.seed = seed
        self.rng = random.Random(seed)
        self.bug = bug
        self.core_class = BUGS.get(bug, RaftCore) if bug else RaftCore
        self.ids = [f"n{i}" for i in range(1, node_count + 1)]
        self.nodes = {
            node_id: Node(node_id, self.rng.uniform(-0.5, 0.5), self.rng.uniform(-0.05, 0.05))
            for node_id in self.ids
        }
        self.config = Config(frozenset(self.ids))
        self.steps = steps
        # Its own stream, so a shrunk schedule leaves every other draw alone.
        self.schedule = (make_schedule(random.Random(seed * 104729 + 3), self.ids, steps)
                         if schedule is None else list(schedule))
        self.net_rng = random.Random(seed * 7919 + 1)
        self.loss = self.net_rng.uniform(0.0, 0.2)
        self.duplication = self.net_rng.uniform(0.0, 0.1)
        self.max_delay = self.net_rng.uniform(0.005, 0.3)
        self.blocked = set()
        self.in_flight = []
        self._sequence = 0
        self.time = 0.0
        # Checks' memory.
        self.leaders = {}
        self.prefix_hashes = {}
        self.committed = {}
        self.acknowledged = {}
        self.read_floors = {}
        for node in self.nodes.values():
            self._start(node)

    # -- nodes ---------------------------------------------------------------

    def _start(self, node):
        node.core = self.core_class(
            node.id, self.config, random.Random(self.rng.random()), ELECTION_TIMEOUT,
            now=node.now(self.time), hard_state=node.hard_state, entries=list(node.entries),
            batch_max=1 if self.bug == "commit-old-term" else 4096, in_flight_max=8,
        )
        node.applied = {}
        node.cut_after = None

    def _crash(self, node):
        node.core = None

    def _execute(self, node, actions):
        for position, action in enumerate(actions):
            if node.cut_after is not None and position >= node.cut_after:
                # A power cut: what was not done yet is lost.
                self._crash(node)
                return
            if isinstance(action, Persist):
                self._persist(node, action)
            elif isinstance(action, Send):
                self._send(action.message)
            elif isinstance(action, Apply):
                self._apply(node, action.entries)
            elif isinstance(action, RoleChanged):
                if action.role == LEADER:
                    self._check_new_leader(node, action.term)
            elif isinstance(action, ReadReady):
                self._check_read(node, action)
            # ReadFailed is a fine answer; SnapshotWanted cannot happen here
            # (no node compacts in the simulation).
        if node.cut_after is not None:
            node.cut_after = None

    def _persist(self, node, action):
        if action.hard_state is not None:
            vote = None if self.bug == "forget-vote" else action.hard_state.vote
            node.hard_state = HardState(action.hard_state.term, vote)
        if action.truncate_from is not None:
            del node.entries[action.truncate_from - 1:]
        for entry in action.append:
            if entry.index != len(node.entries) + 1:
                raise Violation(f"{node.id} persisted entry {entry.index} after "
                                f"{len(node.entries)} entries")
            node.entries.append(entry)
        self._check_log_matching(node, action)

    # -- network -------------------------------------------------------------------

    def _send(self, message):
        if (message.source, message.target) in self.blocked:
            return
        if self.net_rng.random() < self.loss:
            return
        copies = 2 if self.net_rng.random() < self.duplication else 1
        for _ in range(copies):
            self._sequence += 1
            due = self.time + self.net_rng.uniform(0.0005, self.max_delay)
            self.in_flight.append((due, self._sequence, message))

    def _deliver_due(self):
        self.in_flight.sort(key=lambda item: (item[0], item[1]))
        while self.in_flight and self.in_flight[0][0] <= self.time:
            _, _, message = self.in_flight.pop(0)
            if (message.source, message.target) in self.blocked:
                continue
            node = self.nodes[message.target]
            if node.core is None:
                continue
            node.core.now = node.now(self.time)
            term_before = node.core.term
            actions = node.core.step(message)
            if (isinstance(message, VoteRequest) and message.pre and node.core is not None
                    and node.core.term != term_before):
                raise Violation(f"a pre-vote moved {node.id} from term {term_before} "
                                f"to {node.core.term}")
            self._execute(node, actions)

    # -- checks -----------------------------------------------------------------

    def _check_new_leader(self, node, term):
        other = self.leaders.setdefault(term, node.id)
        if other != node.id:
            raise Violation(f"two leaders in term {term}: {other} and {node.id}")
        core = node.core
        for index, entry in self.committed.items():
            if core.term_at(index) != entry.term and index > core.snapshot_index:
                raise Violation(f"leader {node.id} of term {term} lacks committed entry "
                                f"{index} (term {entry.term})")

    def _check_log_matching(self, node, action):
        start = (action.truncate_from or len(node.entries) - len(action.append) + 1)
        start = max(1, min(start, len(node.entries) - len(action.append) + 1))
        digest = self._prefix_hash(node, start - 1)
        for entry in node.entries[start - 1:]:
            digest = hashlib.blake2b(digest + _entry_bytes(entry), digest_size=16).digest()
            known = self.prefix_hashes.setdefault((entry.index, entry.term), digest)
            if known != digest:
                raise Violation(f"log matching: {node.id} and another log hold entry "
                                f"{entry.index} of term {entry.term} after different entries")

    def _prefix_hash(self, node, index):
        digest = b""
        for entry in node.entries[:index]:
            digest = hashlib.blake2b(digest + _entry_bytes(entry), digest_size=16).digest()
        return digest

    def _apply(self, node, entries):
        for entry in entries:
            known = self.committed.setdefault(entry.index, entry)
            if (known.term, known.data) != (entry.term, entry.data):
                raise Violation(f"state machine safety: {node.id} applied {entry} at "
                                f"{entry.index} where {known} was applied")
            node.applied[entry.index] = entry
            if (node.core is not None and node.core.role == LEADER
                    and entry.data.startswith(DATA_PREFIX)):
                self.acknowledged.setdefault(entry.data[1:].decode(), entry.index)

    def _check_read(self, node, ready):
        floor = self.read_floors.pop(ready.context, None)
        if floor is not None and ready.index < floor:
            raise Violation(f"stale read: {node.id} answered {ready.context} at index "
                            f"{ready.index}, but index {floor} was acknowledged before")

    # -- the run ----------------------------------------------------------------------

    def run(self):
        """
        @raise Violation: a property failed.
        """
        events = {}
        for event in self.schedule:
            events.setdefault(event.step, []).append(event)
        for step in range(self.steps):
            for event in events.get(step, ()):
                self._event(event)
            self._advance()
        self._heal_and_check_liveness()

    def _advance(self):
        self.time += STEP
        self._deliver_due()
        for node_id in self.ids:
            node = self.nodes[node_id]
            if node.core is not None:
                self._execute(node, node.core.tick(node.now(self.time)))

    def _leader(self):
        leaders = [n for n in self.nodes.values()
                   if n.core is not None and n.core.role == LEADER]
        return max(leaders, key=lambda n: n.core.term) if leaders else None

    def _event(self, event):
        kind, args = event.kind, event.args
        if kind == "crash":
            self._crash(self.nodes[args[0]])
        elif kind == "crash-leader":
            leader = self._leader()
            if leader is not None:
                self._crash(leader)
        elif kind == "isolate-leader":
            leader = self._leader()
            if leader is not None:
                others = [i for i in self.ids if i != leader.id]
                keep = int(args[0] * ((len(self.ids) - 1) // 2))
                group = {leader.id, *others[:keep]}
                self.blocked = {(a, b) for a in self.ids for b in self.ids
                                if (a in group) != (b in group)}
        elif kind == "bounce-voter":
            voters = sorted(n.id for n in self.nodes.values()
                            if n.core is not None and n.core.role != LEADER
                            and n.core.vote not in (None, n.id))
            if voters:
                node = self.nodes[voters[int(args[0] * len(voters))]]
                self._crash(node)
                self._start(node)
        elif kind == "bounce":
            node = self.nodes[args[0]]
            self._crash(node)
            self._start(node)
        elif kind == "cut":
            node = self.nodes[args[0]]
            if node.core is not None:
                node.cut_after = args[1]
        elif kind == "restart":
            node = self.nodes[args[0]]
            if node.core is None:
                self._start(node)
        elif kind == "partition":
            self.blocked = set(args)
        elif kind == "heal":
            self.blocked = set()
        elif kind == "propose":
            # A client asks any node that believes it leads (a deposed
            # leader included: it learns of its deposition later).
            leaders = sorted(n.id for n in self.nodes.values()
                             if n.core is not None and n.core.role == LEADER)
            leader = self.nodes[leaders[int(args[1] * len(leaders))]] if leaders else None
            if leader is not None:
                try:
                    _, actions = leader.core.propose(args[0].encode())
                except NotLeader:
                    return
                self._execute(leader, actions)
        elif kind == "read":
            node = self.nodes[args[0]]
            if node.core is not None:
                self.read_floors[args[1]] = max(self.acknowledged.values(), default=0)
                self._execute(node, node.core.read_index(args[1]))
        elif kind == "transfer":
            leader = self._leader()
            if leader is not None and args[0] != leader.id:
                self._execute(leader, leader.core.transfer_leadership(args[0]))
        elif kind == "membership":
            self._membership(args[0])

    def _membership(self, node_id):
        # Take a voter out to a learner and back in, one change at a time.
        leader = self._leader()
        if leader is None or node_id == leader.id:
            return
        core = leader.core
        try:
            if node_id in core.config.voters and len(core.config.voters) > 3:
                _, actions = core.change_membership(remove=node_id)
            elif node_id not in core.config.voters | core.config.learners:
                _, actions = core.change_membership(add_learner=node_id)
            elif node_id in core.config.learners:
                _, actions = core.change_membership(promote=node_id)
            else:
                return
        except (ValueError, NotLeader):
            return
        self._execute(leader, actions)

    def _heal_and_check_liveness(self):
        self.blocked = set()
        self.loss = 0.0
        for node in self.nodes.values():
            if node.core is None:
                self._start(node)
        # Everyone back as a voter, so the last value must reach all.
        deadline = self.time + LIVENESS_TIMEOUTS * ELECTION_TIMEOUT
        proposed_in = None
        attempts = 0
        while self.time < deadline:
            self._advance()
            leader = self._leader()
            if leader is None:
                continue
            missing = set(self.ids) - (leader.core.config.voters | leader.core.config.learners)
            for node_id in sorted(missing):
                if self._membership_step(leader, node_id):
                    break
            # Proposed again under each new leader: one that lost its
            # leadership may have lost the entry with it.
            if not missing and proposed_in != (leader.id, leader.core.term):
                attempts += 1
                try:
                    _, actions = leader.core.propose(f"final-{self.seed}-{attempts}".encode())
                except NotLeader:
                    continue
                proposed_in = (leader.id, leader.core.term)
                self._execute(leader, actions)
            finals = [index for value, index in self.acknowledged.items()
                      if value.startswith(f"final-{self.seed}-")]
            if finals and self._everyone_applied(max(finals)):
                self._check_acknowledged()
                return
        raise Violation(
            f"liveness: after healing, no leader committed a value everywhere within "
            f"{LIVENESS_TIMEOUTS} election timeouts"
        )

    def _membership_step(self, leader, node_id):
        try:
            _, actions = leader.core.change_membership(add_learner=node_id)
        except (ValueError, NotLeader):
            return False
        self._execute(leader, actions)
        return True

    def _everyone_applied(self, index):
        return all(n.core is not None and n.core.applied_index >= index
                   for n in self.nodes.values())

    def _check_acknowledged(self):
        for value, index in self.acknowledged.items():
            for node in self.nodes.values():
                entry = node.core.entry(index) if index > node.core.snapshot_index else None
                if entry is None or entry.data != DATA_PREFIX + value.encode():
                    raise Violation(f"acknowledged {value} at {index} is not there on {node.id}")


def _entry_bytes(entry):
    return b"%d:%d:" % (entry.index, entry.term) + entry.data


def _config_value(entry):
    return entry.data.startswith(CONFIG_PREFIX)


def shrink(seed, nodes, steps, bug, schedule):
    """Drop events while the violation stays: the shortest story of it."""
    def fails(candidate):
        try:
            Simulation(seed, nodes, steps, bug, candidate).run()
        except Violation:
            return True
        return False

    chunk = max(len(schedule) // 2, 1)
    while chunk >= 1:
        position, changed = 0, False
        while position < len(schedule):
            candidate = schedule[:position] + schedule[position + chunk:]
            if fails(candidate):
                schedule, changed = candidate, True
            else:
                position += chunk
        if not changed:
            chunk //= 2
    return schedule


def run_many(runs, seed, nodes_choice, steps, bug=None, out=sys.stdout, shrink_failures=True):
    """
    @return: the number of violations.
    """
    violations = 0
    for run in range(runs):
        run_seed = seed + run
        nodes = nodes_choice if nodes_choice else (3, 5, 7)[run % 3]
        simulation = Simulation(run_seed, nodes, steps, bug)
        try:
            simulation.run()
        except Violation as violation:
            violations += 1
            schedule = simulation.schedule
            if shrink_failures:
                schedule = shrink(run_seed, nodes, steps, bug, schedule)
            print(f"violation with seed {run_seed} ({nodes} nodes, {steps} steps"
                  f"{', inject ' + bug if bug else ''}): {violation}", file=out)
            print("schedule:", file=out)
            for event in schedule:
                print(f"  {event}", file=out)
            if bug:
                break
    print(f"{runs if not (bug and violations) else run + 1} schedules, "
          f"{violations} violations", file=out)
    return violations


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.cluster.sim")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, choices=(3, 5, 7), default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--inject", choices=sorted(BUGS), default=None)
    arguments = parser.parse_args(argv)
    violations = run_many(arguments.runs, arguments.seed, arguments.nodes, arguments.steps,
                          arguments.inject)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
