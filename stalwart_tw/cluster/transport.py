"""
A node's cluster transport: the RPC server and client, and gossip, on one
port number (TCP for RPC, UDP for gossip), started and stopped together.

A node takes part in a cluster when rpc-advertise-addr is set (the first
node of a cluster has no seed-nodes; the others name it or any member).
"""

from twisted.internet.defer import DeferredList

from stalwart_tw.cluster.gossip import Gossip, parse_seed
from stalwart_tw.cluster.peers import PeerConnections
from stalwart_tw.cluster.rpc import RpcServerFactory
from stalwart_tw.logs import LogThrottle
from stalwart_tw.cluster.tls import rpc_tls
from stalwart_tw.logs import Logger


def _host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClusterTransport:
    """
    @param identity: the node's L{stalwart_tw.cluster.identity.Identity}.
    @param encryption_key: the cluster's shared secret.
    """

    log = Logger()

    def __init__(self, settings, identity, encryption_key, reactor):
        self._settings = settings
        self._identity = identity
        self._key = encryption_key
        self._reactor = reactor
        self._ports = []
        self.gossip = None
        self.rpc = None
        self._server = None

    def listen(self):
        """
        Bind RPC (TLS over TCP) and gossip (UDP) on rpc-bind-addr and
        rpc-port; gossip starts pinging at once.

        @raise twisted.internet.error.CannotListenError: a port is taken.
        """
        settings = self._settings
        tls = rpc_tls(settings)
        # Shared by the server and the client side: a peer may call back
        # over a connection either side opened.
        handlers = {}
        # One handshake failure line per peer host and interval, both ways.
        handshake_failures = LogThrottle(self._reactor)
        self._server = RpcServerFactory(settings, self._key, handlers, reactor=self._reactor,
                                        handshake_failures=handshake_failures)
        tcp = self._reactor.listenSSL(
            settings.rpc_port, self._server, tls.server, interface=settings.rpc_bind_addr
        )
        self._ports.append(tcp)
        port = tcp.getHost().port
        seeds = [parse_seed(seed, settings.rpc_port) for seed in settings.seed_nodes]
        self.gossip = Gossip(
            self._identity.node_id, self._identity.generation,
            (settings.rpc_advertise_addr, port), settings.jmap_url, settings.cluster_role,
            self._key, settings.peer_ping_interval / 1000.0, seeds=seeds, clock=self._reactor,
        )
        handlers.update(self.gossip.rpc_handlers())
        self.rpc = PeerConnections(
            settings, self._key, tls.client, handlers=handlers, reactor=self._reactor,
            handshake_failures=handshake_failures,
        )
        self.gossip.rpc = self.rpc
        self._ports.append(
            self._reactor.listenUDP(port, self.gossip, interface=settings.rpc_bind_addr)
        )
        self.log.info(
            "RPC listening on tls://{address}, gossip on udp://{address}, node {id} "
            "(generation {generation})",
            address=_host_port(settings.rpc_bind_addr, port), id=self._identity.node_id,
            generation=self._identity.generation,
        )
        return port

    def stop(self):
        """
        Say goodbye to the peers, then close everything.

        @return: a Deferred firing once ports and connections are closed.
        """
        if self.gossip is not None and self.gossip.transport is not None:
            self.gossip.leave()
        ports, self._ports = self._ports, []
        closing = [port.stopListening() for port in ports]
        if self.rpc is not None:
            closing.append(self.rpc.close())
        if self._server is not None:
            closing.append(self._server.close())
        return DeferredList([d for d in closing if d is not None])

    def describe(self):
        """
        @return: the cluster document of C{GET /admin/cluster}.
        """
        host, port = self.gossip.advertised
        return {
            "node": {
                "id": self._identity.node_id,
                "rpc": _host_port(host, port),
                "jmapUrl": self._settings.jmap_url,
                "role": self._settings.cluster_role,
                "generation": self._identity.generation,
                "epoch": self.gossip.epoch,
                "dropped": dict(self.gossip.dropped),
            },
            "peers": self.gossip.table(),
        }
