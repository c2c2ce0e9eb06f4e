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
