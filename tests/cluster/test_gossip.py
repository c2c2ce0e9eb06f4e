"""
Tests of gossip: sealed packets, membership, failure detection, leave.

Nodes run on a simulated network (task.Clock, packets delivered by the
test), so every schedule is exact and repeatable.
"""

import os

import msgpack
from twisted.internet import defer, task
from twisted.logger import capturedLogs
from twisted.trial.unittest import TestCase

from stalwart_tw.cluster.failure import ALIVE, OFFLINE, SUSPECTED
from stalwart_tw.cluster.gossip import (
    FORGET_AFTER,
    JOIN,
    LEFT,
    MAX_PACKET,
    PING,
    Gossip,
    PacketRejected,
    PacketSeal,
    Summary,
    UNOPENED_LOG_INTERVAL,
    decode_packet,
    encode_packet,
    parse_seed,
)

KEY = "a cluster key of enough length, shared"
INTERVAL = 0.5


class Network:
    """Datagrams between nodes, delivered when the test says."""

    def __init__(self, clock):
        self.clock = clock
        self.nodes = {}
        self.queue = []
        self.udp_blocked = set()  # addresses whose packets are lost, both ways
        self.rpc_blocked = set()
        self.captured = []

    def add(self, gossip):
        address = gossip.advertised
        self.nodes[address] = gossip
        gossip.transport = _Transport(self, address)
        gossip.startProtocol()

    def remove(self, address):
        gossip = self.nodes.pop(address)
        gossip.stopProtocol()

    def flush(self):
        while self.queue:
            packet, source, target = self.queue.pop(0)
            self.captured.append((packet, source, target))
            if source in self.udp_blocked or target in self.udp_blocked:
                continue
            node = self.nodes.get(target)
            if node is not None:
                node.datagramReceived(packet, source)

    def run(self, seconds, step=0.1):
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)
            self.flush()


class _Transport:
    def __init__(self, network, address):
        self.network, self.address = network, address

    def write(self, packet, address):
        self.network.queue.append((packet, self.address, address))


class FakeRpc:
    """Calls another node's gossip RPC handlers directly."""

    def __init__(self, network, address):
        self.network, self.address = network, address
        self.alive = []
        self.forgotten = []

    def call(self, address, method, payload):
        node = self.network.nodes.get(address)
        if node is None or {address, self.address} & self.network.rpc_blocked:
            return defer.fail(ConnectionError("unreachable"))
        return defer.succeed(node.rpc_handlers()[method](self.address, payload))

    def state(self, address):
        if address in self.network.nodes and not (
            {address, self.address} & self.network.rpc_blocked
        ):
            return "connected"
        return "idle"

    def peer_alive(self, address):
        self.alive.append(address)

    def forget(self, address):
        self.forgotten.append(address)


class GossipTestCase(TestCase):
    def setUp(self):
        self.clock = task.Clock()
        # Members that advertise host names are resolved (here, all to one address).
        self.clock.resolve = lambda name: defer.succeed("127.0.0.9")
        self.network = Network(self.clock)
        self.transitions = []

    def node(self, number, seeds=(), key=KEY, generation=1, node_id=None):
        address = ("127.0.0.1", 7900 + number)
        gossip = Gossip(
            node_id or f"{number:016x}", generation, address, f"http://n{number}", "voter",
            key, INTERVAL, seeds=seeds, rpc=FakeRpc(self.network, address), clock=self.clock,
            wall_clock=lambda: 1_000_000 + self.clock.seconds(),
        )
        gossip.add_listener(
            lambda member, old, new, n=number: self.transitions.append((n, member.node_id, new))
        )
        self.network.add(gossip)
        return gossip

    def cluster(self, size):
        first = self.node(0)
        nodes = [first] + [self.node(n, seeds=[first.advertised]) for n in range(1, size)]
        self.network.run(5)
        return nodes

    def states(self, gossip):
        return {member.node_id: member.state for member in gossip.members.values()}


class SealTests(TestCase):
    def setUp(self):
        self.seal = PacketSeal(KEY)
        self.plain = encode_packet(PING, Summary("00" * 8, 1, 5, 0, 0, "127.0.0.1", 7911), [])

    def test_round_trip(self):
        packet = self.seal.seal(self.plain)
        self.assertEqual(self.seal.open(packet), self.plain)
        self.assertNotEqual(self.seal.seal(self.plain), packet)  # fresh nonce

    def test_tampered_packets_refused(self):
        """Flipped bits, truncation and another key: none opens."""
        packet = self.seal.seal(self.plain)
        for position in (0, 12, len(packet) // 2, len(packet) - 1):
            flipped = bytearray(packet)
            flipped[position] ^= 0x01
            self.assertRaises(PacketRejected, self.seal.open, bytes(flipped))
        for length in (0, 11, 27, len(packet) - 1):
            self.assertRaises(PacketRejected, self.seal.open, packet[:length])
        self.assertRaises(PacketRejected, PacketSeal("another cluster's key!!").open, packet)
        self.assertRaises(PacketRejected, self.seal.open, os.urandom(MAX_PACKET + 1))

    def test_malformed_content_refused(self):
        for plain in (b"\xc1", b"\x93\x01\x02\x03", encode_packet(PING, Summary(
                "00" * 8, 1, 1, 0, 0, "h", 1), [])[:-3] + b"\x01\x02\x03"):
            self.assertRaises(PacketRejected, decode_packet, plain)

    def test_parse_seed(self):
        self.assertEqual(parse_seed("10.0.0.1", 7911), ("10.0.0.1", 7911))
        self.assertEqual(parse_seed("node-b:8000", 7911), ("node-b", 8000))
        self.assertEqual(parse_seed("[::1]:8000", 7911), ("::1", 8000))
        self.assertEqual(parse_seed("[::1]", 7911), ("::1", 7911))


class MembershipTests(GossipTestCase):
    def test_three_nodes_one_seed_each(self):
        """Each node given one seed: all reach full membership, with URLs and roles."""
        a = self.node(0)
        b = self.node(1, seeds=[a.advertised])
        c = self.node(2, seeds=[b.advertised])
        self.network.run(5)
        for gossip in (a, b, c):
            self.assertEqual(len(gossip.members), 2)
            self.assertEqual(set(self.states(gossip).values()), {ALIVE})
            self.assertEqual(sorted(m.jmap_url for m in gossip.members.values())
                             , sorted({"http://n0", "http://n1", "http://n2"} - {gossip.jmap_url}))

    def test_five_nodes_full_membership(self):
        """Five nodes; each vouches to its RPC client for every peer it hears from."""
        nodes = self.cluster(5)
        for gossip in nodes:
            self.assertEqual(set(self.states(gossip).values()), {ALIVE})
            self.assertEqual(len(gossip.members), 4)
            self.assertEqual(set(gossip.rpc.alive),
                             {n.advertised for n in nodes if n is not gossip})

    def test_every_packet_fits_a_datagram(self):
        """With 5, 50 and 500 members known, every packet sent stays under 1,400 bytes."""
        for size in (5, 50, 500):
            gossip = self.node(size)
            for n in range(size):
                gossip._observe(Summary(f"{n + 1:016x}", 1, 1, 2**40, 2**40,
                                        "very-long-host-name-of-member-%d.example.org" % n,
                                        7911), gossip.summary())
            self.network.captured.clear()
            self.network.run(2)
            sent = [len(p) for p, source, _ in self.network.captured if source == gossip.advertised]
            self.assertTrue(sent)
            self.assertLessEqual(max(sent), MAX_PACKET, size)

    def test_other_key_never_joins(self):
        """A node with another encryption key appears in no table, and learns nothing."""
        a, b = self.cluster(2)
        stranger = self.node(9, seeds=[a.advertised], key="not the cluster's key at all")
        self.network.run(5)
        self.assertNotIn(stranger.node_id, a.members)
        self.assertEqual(stranger.members, {})
        self.assertGreater(a.dropped["unopened"], 0)

    def test_replay_does_not_go_backwards(self):
        """An old packet replayed after newer ones changes nothing."""
        a, b = self.cluster(2)
        old = [p for p, source, _ in self.network.captured if source == b.advertised][0]
        before = (a.members[b.node_id].epoch, a.members[b.node_id].generation)
        a.datagramReceived(old, b.advertised)
        self.assertEqual((a.members[b.node_id].epoch, a.members[b.node_id].generation), before)


class FailureTests(GossipTestCase):
    def test_killed_node_suspected_then_offline_then_back(self):
        """Silence: suspected, then offline within 6 s; restarted (next generation): alive."""
        nodes = self.cluster(3)
        dead = nodes[2]
        self.network.remove(dead.advertised)
        self.network.rpc_blocked.add(dead.advertised)
        start = self.clock.seconds()
        offline_at = None
        while offline_at is None and self.clock.seconds() - start < 10:
            self.network.run(0.1)
            if all(g.members[dead.node_id].state == OFFLINE for g in nodes[:2]):
                offline_at = self.clock.seconds() - start
        self.assertIsNotNone(offline_at)
        self.assertLess(offline_at, 6.0)
        for number in (0, 1):
            kinds = [state for n, node_id, state in self.transitions
                     if n == number and node_id == dead.node_id]
            self.assertEqual(kinds[-2:], [SUSPECTED, OFFLINE])
        self.network.rpc_blocked.clear()
        again = self.node(2, seeds=[nodes[0].advertised], generation=2, node_id=dead.node_id)
        self.network.run(3)
        for gossip in nodes[:2]:
            member = gossip.members[dead.node_id]
            self.assertEqual((member.state, member.generation), (ALIVE, 2))
        self.assertEqual(again.generation, 2)

    def test_udp_lost_but_rpc_up(self):
        """
        A peer whose UDP is lost but whose RPC answers is probed before it
        is suspected, and never is; once RPC is lost too, it goes offline.
        """
        nodes = self.cluster(3)
        quiet = nodes[2]
        self.network.udp_blocked.add(quiet.advertised)
        self.network.run(20)
        for gossip in nodes[:2]:
            self.assertEqual(gossip.members[quiet.node_id].state, ALIVE)
        self.assertEqual([t for t in self.transitions if t[1] == quiet.node_id], [])
        self.network.rpc_blocked.add(quiet.advertised)
        self.network.run(10)
        for gossip in nodes[:2]:
            self.assertEqual(gossip.members[quiet.node_id].state, OFFLINE)

    def test_leave(self):
        """A node that leaves cleanly is 'left' at once everywhere, not suspected."""
        nodes = self.cluster(3)
        nodes[2].leave()
        self.network.flush()
        self.network.remove(nodes[2].advertised)
        for gossip in nodes[:2]:
            self.assertEqual(gossip.members[nodes[2].node_id].state, LEFT)
        self.network.run(10)
        for gossip in nodes[:2]:
            self.assertEqual(gossip.members[nodes[2].node_id].state, LEFT)

    def test_table(self):
        """The admin table names every peer with its address, state, phi and epoch."""
        a, b = self.cluster(2)
        (row,) = a.table()
        self.assertEqual(row["id"], b.node_id)
        self.assertEqual(row["rpc"], "127.0.0.1:7901")
        self.assertEqual((row["jmapUrl"], row["role"], row["state"]), ("http://n1", "voter", ALIVE))
        self.assertLess(row["phi"], 5)
        self.assertGreater(row["epoch"], 0)
        self.assertEqual(row["rpcConnection"], "connected")

    def test_seed_by_host_name(self):
        """A seed given by name is resolved with the reactor's resolver, never blocking."""
        resolved = []

        def resolve(name):
            resolved.append(name)
            return defer.succeed("127.0.0.1")

        self.clock.resolve = resolve
        seed = self.node(0)
        late = self.node(1, seeds=[("seed.cluster.test", 7900)])
        self.network.run(2)
        self.assertIn("seed.cluster.test", resolved)
        self.assertIn(late.node_id, seed.members)

    def test_join_repeated_until_answered(self):
        """A node whose seed is down keeps sending join, and joins once the seed is up."""
        late = self.node(1, seeds=[("127.0.0.1", 7900)])
        self.network.run(2)
        joins = [p for p, source, _ in self.network.captured if source == late.advertised]
        self.assertGreaterEqual(len(joins), 3)
        self.assertTrue(all(decode_packet(PacketSeal(KEY).open(p))[0] == JOIN for p in joins))
        seed = self.node(0)
        self.network.run(2)
        self.assertIn(late.node_id, seed.members)
        self.assertIn(seed.node_id, late.members)


class HostileInputTests(GossipTestCase):
    """
    What a peer holding the key (or a recording of the network) might send
    does not break gossip.
    """

    def test_unsendable_address_does_not_stop_gossip(self):
        """A member at an address the socket refuses: the packet is lost, pinging goes on."""
        a, b = self.cluster(2)

        def refuse(packet, address):
            raise ValueError("wrong address family")

        a.transport.write = refuse
        self.network.run(2)
        self.assertTrue(a._loop.running)
        self.assertGreater(a.dropped["unsendable"], 0)
        a.leave()  # and a clean stop does not raise either

    def test_member_list_checked(self):
        """Entries of a member list over RPC: our own id in any spelling, bad hosts, too many."""
        a = self.node(0)
        good = {"id": "11" * 8, "host": "10.0.0.5", "port": 7911, "generation": 1, "epoch": 3,
                "jmapUrl": "http://n5", "role": "voter"}
        a._merge_members([
            good,
            dict(good, id=a.node_id.upper()),
            dict(good, id="aa bb cc dd 00 11 22 33"),
            dict(good, id="22" * 8, host="\x00\n<script>"),
            dict(good, id="33" * 8, role="emperor", jmapUrl=7),
        ])
        self.assertEqual(sorted(a.members), ["11" * 8, "33" * 8])
        self.assertEqual((a.members["33" * 8].role, a.members["33" * 8].jmap_url), (None, None))
        a._merge_members([dict(good, id=f"{n:016x}") for n in range(10_001)])
        self.assertEqual(len(a.members), 2)

    def test_epoch_far_ahead_ignored(self):
        """A sample claiming a member's epoch years ahead neither freezes it nor bumps ours."""
        a, b = self.cluster(2)
        member = a.members[b.node_id]
        forged = Summary(b.node_id, member.generation, member.epoch + 2**40, 0, 0,
                         member.host, member.port)
        self_forged = Summary(a.node_id, a.generation, a.epoch + 2**40, 0, 0, *a.advertised)
        a.datagramReceived(PacketSeal(KEY).seal(encode_packet(
            PING, b.summary(), [forged, self_forged])), b.advertised)
        self.assertLess(a.members[b.node_id].epoch, 2**40)
        self.assertLess(a.epoch, 2**40)
        self.network.run(2)
        self.assertEqual(a.members[b.node_id].state, ALIVE)

    def test_crafted_kind_is_malformed(self):
        """A packet whose kind is a list is counted malformed, not a crash."""
        a, b = self.cluster(2)
        plain = msgpack.packb([[1], b.summary().encode(), [], {}], use_bin_type=True)
        a.datagramReceived(PacketSeal(KEY).seal(plain), b.advertised)
        self.assertEqual(a.dropped["malformed"], 1)

    def test_replayed_join_keeps_new_card(self):
        """An old join replayed does not bring back an old JMAP URL or role."""
        a, b = self.cluster(2)
        old_join = next(p for p, source, _ in self.network.captured
                        if source == b.advertised
                        and decode_packet(PacketSeal(KEY).open(p))[0] == JOIN)
        a.members[b.node_id].jmap_url, a.members[b.node_id].role = "http://moved", "replica"
        a.datagramReceived(old_join, b.advertised)
        self.assertEqual((a.members[b.node_id].jmap_url, a.members[b.node_id].role),
                         ("http://moved", "replica"))


class HygieneTests(GossipTestCase):
    """
    Strangers are logged without flooding the log; long-gone peers are
    forgotten.
    """

    def test_unopened_logged_once_per_interval(self):
        """Packets under another key: one line per source address per interval, counted."""
        a = self.node(0)
        strangers = PacketSeal("not the cluster's key at all")
        packet = strangers.seal(encode_packet(PING, Summary("99" * 8, 1, 1, 0, 0, "10.9.9.9", 1),
                                              []))

        def lines(events):
            return [e for e in events if "do not open" in e.get("log_format", "")]

        with capturedLogs() as events:
            for _ in range(500):
                a.datagramReceived(packet, ("10.9.9.9", 7911))
                a.datagramReceived(packet, ("10.9.9.8", 7911))
            self.clock.advance(UNOPENED_LOG_INTERVAL - 1)
            a.datagramReceived(packet, ("10.9.9.9", 7911))
        self.assertEqual(sorted((e["address"], e["count"]) for e in lines(events)),
                         [("10.9.9.8:7911", 1), ("10.9.9.9:7911", 1)])
        self.assertEqual(a.dropped["unopened"], 1001)
        with capturedLogs() as events:
            self.clock.advance(1)
            a.datagramReceived(packet, ("10.9.9.9", 7911))
        self.assertEqual([(e["address"], e["count"]) for e in lines(events)],
                         [("10.9.9.9:7911", 501)])

    def test_offline_peer_forgotten_after_a_day(self):
        """Offline for 24 h: out of the table, lists and RPC links; a replay does not revive it."""
        a, b = self.cluster(2)
        old = [p for p, source, _ in self.network.captured if source == b.advertised][-1]
        self.network.remove(b.advertised)
        self.network.rpc_blocked.add(b.advertised)
        self.network.run(10)
        member = a.members[b.node_id]
        self.assertEqual(member.state, OFFLINE)
        self.clock.advance(member.state_since + FORGET_AFTER - 1 - self.clock.seconds())
        self.assertIn(b.node_id, a.members)
        self.clock.advance(2)
        self.assertNotIn(b.node_id, a.members)
        self.assertEqual(a.table(), [])
        self.assertEqual([m["id"] for m in a._member_list()], [a.node_id])
        self.assertEqual(a.rpc.forgotten, [b.advertised])
        a.datagramReceived(old, b.advertised)
        self.assertNotIn(b.node_id, a.members)

    def test_left_peer_forgotten_and_welcomed_back(self):
        """Left for 24 h: forgotten; when it starts again it joins like a new node."""
        a, b = self.cluster(2)
        b.leave()
        self.network.flush()
        self.network.remove(b.advertised)
        self.assertEqual(a.members[b.node_id].state, LEFT)
        self.clock.advance(FORGET_AFTER + 1)
        self.assertEqual(a.members, {})
        again = self.node(1, seeds=[a.advertised], generation=2, node_id=b.node_id)
        self.network.run(2)
        member = a.members[b.node_id]
        self.assertEqual((member.state, member.generation, member.jmap_url),
                         (ALIVE, 2, "http://n1"))
        self.assertIn(a.node_id, again.members)
