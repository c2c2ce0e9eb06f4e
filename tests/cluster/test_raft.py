"""
Unit tests of the Raft core beyond the transcripts: the single node,
compaction, gossip's early PreVote, replicas and learners.
"""

import random

from twisted.trial.unittest import TestCase

from stalwart_tw.cluster.raft import (
    FOLLOWER,
    LEADER,
    PRE_CANDIDATE,
    Apply,
    Config,
    NotLeader,
    RaftCore,
    ReadReady,
    Send,
    SnapshotWanted,
)


def core(node_id="n1", voters=("n1",), learners=(), **options):
    return RaftCore(node_id, Config(frozenset(voters), frozenset(learners)),
                    random.Random(node_id), 1.0, **options)


class SingleNodeTests(TestCase):
    def test_alone_leads_commits_and_reads(self):
        """One voter elects itself, commits each proposal at once, answers reads at once."""
        node = core()
        node.tick(2.5)
        self.assertEqual(node.role, LEADER)
        index, actions = node.propose(b"x")
        self.assertIn(Apply((node.entries[-1],)), actions)
        self.assertEqual(node.commit_index, index)
        self.assertEqual(node.read_index("r"), [ReadReady("r", index)])

    def test_followers_refuse_proposals(self):
        node = core("n2", voters=("n1", "n2", "n3"))
        self.assertRaises(NotLeader, node.propose, b"x")


class CompactionTests(TestCase):
    def test_compact_then_lagging_peer_wants_snapshot(self):
        """Compacted entries are gone; a peer needing them gets SnapshotWanted."""
        leader = core(voters=("n1",), learners=("n2",))
        leader.tick(2.5)
        for n in range(5):
            leader.propose(b"%d" % n)
        self.assertRaises(ValueError, leader.compact, leader.applied_index + 1)
        leader.compact(4)
        self.assertEqual((leader.snapshot_index, leader.term_at(4)), (4, 1))
        self.assertIsNone(leader.term_at(3))
        self.assertEqual(leader.entries[0].index, 5)
        leader.progress["n2"].next_index = 2
        leader.progress["n2"].in_flight = 0
        self.assertIn(SnapshotWanted("n2", 4), leader._send_append("n2"))


class GossipHintTests(TestCase):
    def test_suspected_leader_means_early_prevote(self):
        """A follower told the leader is suspected campaigns at its next tick, with PreVote."""
        node = core("n2", voters=("n1", "n2", "n3"))
        node.tick(0.1)
        self.assertEqual(node.role, FOLLOWER)
        node.leader_suspected()
        actions = node.tick(0.2)
        self.assertEqual(node.role, PRE_CANDIDATE)
        self.assertEqual(node.term, 0)
        self.assertTrue(all(a.message.pre for a in actions if isinstance(a, Send)))


class RoleTests(TestCase):
    def test_replica_and_learner_never_campaign(self):
        """A replica (cluster-role) and a learner stay followers however long the silence."""
        replica = core("n2", voters=("n1", "n2", "n3"), replica=True)
        learner = core("n4", voters=("n1", "n2", "n3"), learners=("n4",))
        for node in (replica, learner):
            self.assertEqual(node.tick(100.0), [])
            self.assertEqual(node.role, FOLLOWER)


class Network:
    """Cores that hand each other messages at once (unless cut off)."""

    def __init__(self, ids, **options):
        config = Config(frozenset(ids))
        self.cores = {i: RaftCore(i, config, random.Random(i), 1.0, **options) for i in ids}
        self.cut = set()
        self.now = 0.0

    def run(self, node_id, actions):
        queue = [(node_id, a) for a in actions]
        while queue:
            _, action = queue.pop(0)
            if isinstance(action, Send):
                message = action.message
                if {message.source, message.target} & self.cut:
                    continue
                target = self.cores[message.target]
                queue += [(message.target, a) for a in target.step(message)]

    def tick(self, seconds, step=0.05):
        for _ in range(int(seconds / step)):
            self.now += step
            for node_id, node in self.cores.items():
                if node_id not in self.cut:
                    self.run(node_id, node.tick(self.now))

    def leader(self):
        leaders = [c for c in self.cores.values() if c.role == LEADER]
        return max(leaders, key=lambda c: c.term) if leaders else None


class MembershipEdgeTests(TestCase):
    def test_leader_that_removes_itself_steps_down(self):
        """Once the change removing it commits, the leader steps down; the rest elect one."""
        network = Network(["a", "b", "c", "d"])
        network.tick(3)
        leader = network.leader()
        _, actions = leader.change_membership(remove=leader.id)
        network.run(leader.id, actions)
        network.tick(0.5)
        self.assertEqual(leader.role, FOLLOWER)
        network.tick(5)
        new = network.leader()
        self.assertIsNotNone(new)
        self.assertNotEqual(new.id, leader.id)
        self.assertNotIn(leader.id, new.config.voters)

    def test_removed_voter_learns_it(self):
        """A removed voter receives the entry that removes it, and stops campaigning."""
        network = Network(["a", "b", "c", "d"])
        network.tick(3)
        leader = network.leader()
        gone = sorted(set(network.cores) - {leader.id})[0]
        _, actions = leader.change_membership(remove=gone)
        network.run(leader.id, actions)
        network.tick(1)
        removed = network.cores[gone]
        self.assertNotIn(gone, removed.config.voters)
        self.assertNotIn(gone, leader.progress)
        self.assertEqual(removed.tick(network.now + 10), [])


class CompactedLeaderTests(TestCase):
    def test_new_leader_with_compacted_log_reaches_followers(self):
        """A leader whose log is compacted still heartbeats followers that hold the prefix."""
        network = Network(["a", "b", "c"])
        network.tick(3)
        first = network.leader()
        for n in range(3):
            network.run(first.id, first.propose(b"%d" % n)[1])
        network.tick(1)
        lagging = sorted(set(network.cores) - {first.id})[0]
        successor = sorted(set(network.cores) - {first.id, lagging})[0]
        successor_core = network.cores[successor]
        successor_core.compact(successor_core.applied_index)
        network.cut = {lagging}
        network.run(first.id, first.transfer_leadership(successor))
        network.tick(1)
        self.assertEqual(network.leader().id, successor)
        network.run(successor, successor_core.propose(b"after")[1])
        network.cut = set()
        network.tick(3)
        self.assertEqual(network.cores[lagging].last_index, successor_core.last_index)
        self.assertEqual(network.cores[lagging].leader, successor)
