"""
Real nodes: `twistd -n stalwart` processes on loopback ports that find each
other by gossip, notice a node killed with SIGKILL, see it come back, and
never admit a node that holds another encryption key.

The tests wait for the lines the nodes log (a peer joined, is suspected, is
offline, is alive), then read GET /admin/cluster, as an operator would.
"""

import json
import os
import re
import socket
import tempfile
import time

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from stalwart_tw.cluster.peers import PeerConnections
from stalwart_tw.cluster.rpc import RpcError
from stalwart_tw.cluster.tls import rpc_tls
from stalwart_tw.config import load_settings
from tests.test_node_process import basic, start_node

KEY = "process-cluster-key-0123456789"
SECRET = "the-cluster-secret"
RPC_LINE = re.compile(rb"RPC listening on tls://127\.0\.0\.1:(\d+).*node ([0-9a-f]{16})")


def free_port():
    """A port free on loopback for TCP and UDP alike (RPC and gossip share it)."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class ClusterNode:
    """One node process, its ports and what it has logged."""

    def __init__(self, test, data, rpc_port, jmap_port, seed=None, key=KEY):
        self.data, self.rpc_port, self.jmap_port, self.seed, self.key = (
            data, rpc_port, jmap_port, seed, key)
        self.test = test
        self.node_id = None

    @defer.inlineCallbacks
    def start(self):
        arguments = [
            f"--db-path={self.data}", f"--jmap-port={self.jmap_port}",
            f"--jmap-url=http://127.0.0.1:{self.jmap_port}", "--manhole-port=0",
            f"--admin-secret={SECRET}", f"--encryption-key={self.key}",
            "--rpc-advertise-addr=127.0.0.1", "--rpc-bind-addr=127.0.0.1",
            f"--rpc-port={self.rpc_port}",
        ]
        if self.seed is not None:
            arguments.append(f"--seed-nodes=127.0.0.1:{self.seed.rpc_port}")
        self.child, self.transport = start_node(self.test, *arguments)
        match = yield self.child.wait_for(RPC_LINE)
        self.node_id = match.group(2).decode()
        yield self.child.wait_for(rb"node ready")
        return self

    def wait_for_peer(self, other, state, after=0):
        """Fires once this node logged C{other} entering C{state} (after an output offset)."""
        pattern = (rb"cluster: peer " + other.node_id.encode()
                   + rb" at [^ ]+ " + state.encode())
        return self.child.wait_for(re.compile(pattern), after)

    def kill(self):
        self.transport.signalProcess("KILL")
        return self.child.ended

    @defer.inlineCallbacks
    def cluster(self):
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = yield http.get(f"http://127.0.0.1:{self.jmap_port}/admin/cluster",
                                  headers=basic("admin", SECRET))
        self.test.assertEqual(response.code, 200)
        return json.loads((yield response.content()))


class ClusterProcessTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def start_cluster(self, size):
        nodes = []
        for _ in range(size):
            node = ClusterNode(self, os.path.abspath(self.mktemp()), free_port(), free_port(),
                               seed=nodes[-1] if nodes else None)
            nodes.append((yield node.start()))
        yield defer.gatherResults([
            node.wait_for_peer(other, "joined")
            for node in nodes for other in nodes if other is not node
        ])
        return nodes

    @defer.inlineCallbacks
    def assert_full_membership(self, nodes):
        for node in nodes:
            described = yield node.cluster()
            self.assertEqual(described["node"]["id"], node.node_id)
            self.assertEqual(described["node"]["rpc"], f"127.0.0.1:{node.rpc_port}")
            peers = {peer["id"]: peer for peer in described["peers"]}
            self.assertEqual(set(peers), {n.node_id for n in nodes} - {node.node_id})
            for other in nodes:
                if other is node:
                    continue
                peer = peers[other.node_id]
                self.assertEqual(peer["state"], "alive")
                self.assertEqual(peer["rpc"], f"127.0.0.1:{other.rpc_port}")
                self.assertEqual(peer["role"], "voter")
                self.assertEqual(peer["jmapUrl"], f"http://127.0.0.1:{other.jmap_port}")

    @defer.inlineCallbacks
    def test_three_nodes_kill_and_return(self):
        """
        Three nodes, one seed each, reach full membership; a node killed with
        SIGKILL is suspected then offline on the others within 6 s; started
        again, it is alive everywhere, in its next generation; stopped with
        SIGTERM, it has left.
        """
        nodes = yield self.start_cluster(3)
        yield self.assert_full_membership(nodes)
        victim, survivors = nodes[2], nodes[:2]
        offsets = [len(node.child.output) for node in survivors]
        killed_at = time.monotonic()
        yield victim.kill()
        yield defer.gatherResults([
            node.wait_for_peer(victim, "is suspected", offset)
            for node, offset in zip(survivors, offsets)
        ])
        yield defer.gatherResults([
            node.wait_for_peer(victim, "is offline", offset)
            for node, offset in zip(survivors, offsets)
        ])
        self.assertLess(time.monotonic() - killed_at, 6.0)
        for node in survivors:
            states = {p["id"]: p["state"] for p in (yield node.cluster())["peers"]}
            self.assertEqual(states[victim.node_id], "offline")
        offsets = [len(node.child.output) for node in survivors]
        yield victim.start()
        yield defer.gatherResults([
            node.wait_for_peer(victim, r"is alive \(was offline\)", offset)
            for node, offset in zip(survivors, offsets)
        ])
        for node in survivors:
            peer = {p["id"]: p for p in (yield node.cluster())["peers"]}[victim.node_id]
            self.assertEqual((peer["state"], peer["generation"]), ("alive", 2))
        # Stopped cleanly, it says goodbye: "left" at once, never suspected.
        offsets = [len(node.child.output) for node in survivors]
        victim.transport.signalProcess("TERM")
        self.assertEqual((yield victim.child.ended), 0)
        yield defer.gatherResults([
            node.wait_for_peer(victim, r"is left \(was alive\)", offset)
            for node, offset in zip(survivors, offsets)
        ])

    @defer.inlineCallbacks
    def test_five_nodes_and_a_stranger(self):
        """
        Five nodes reach full membership; a node started with another
        encryption key appears in no table, and its RPC gets no answer.
        """
        nodes = yield self.start_cluster(5)
        yield self.assert_full_membership(nodes)
        stranger = ClusterNode(self, os.path.abspath(self.mktemp()), free_port(), free_port(),
                               seed=nodes[0], key="not-this-cluster-key-0123456789")
        yield stranger.start()
        # Its joins reach the seed, which cannot open them.
        while (yield nodes[0].cluster())["node"]["dropped"]["unopened"] < 3:
            yield deferLater(0.2)
        for node in nodes:
            ids = {peer["id"] for peer in (yield node.cluster())["peers"]}
            self.assertNotIn(stranger.node_id, ids)
        self.assertEqual((yield stranger.cluster())["peers"], [])
        yield self.assert_no_rpc_answer(nodes[0], stranger.key)

    @defer.inlineCallbacks
    def assert_no_rpc_answer(self, node, key):
        folder = tempfile.mkdtemp()
        settings = load_settings(None, {"db-path": folder, "rpc-timeout": "2000"}, {})
        client = PeerConnections(settings, key, rpc_tls(settings, folder).client,
                                 handlers={"none": lambda peer, payload: None})
        try:
            yield self.assertFailure(
                client.call(("127.0.0.1", node.rpc_port), "gossip.probe", None), RpcError)
        finally:
            yield client.close()


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
