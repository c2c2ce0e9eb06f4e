"""
Gossip: how nodes find each other and notice when one fails (UDP, on the
RPC port number).

Every packet is sealed with AES-256-GCM-SIV under a key derived from
encryption-key by BLAKE3 in derive-key mode; one that does not open, does
not decode, or is larger than a datagram is dropped and counted, never
answered. A packet names its sender (peer id, generation, epoch, last Raft
log term and index, advertised address) and carries a rotating sample of
the members the sender knows, trimmed so the sealed packet fits 1,400
bytes whatever the cluster's size.

Every peer-ping-interval a node counts its epoch up (a Lamport clock: it
never falls behind an epoch of its own it hears of) and pings the next
member in turn, which answers with a pong. Learning a higher epoch of a
member, from it or from anyone's sample, is a heartbeat for that member's
phi accrual detector. An older (generation, epoch) than the one known
changes nothing, so a replayed packet cannot move state backwards. A
member never heard of, or one whose generation changed (it restarted),
makes the node ask the sender over RPC for its full member list (with
JMAP URLs and roles, which packets have no room for).

A new node sends join to its seeds until one answers; a node that stops
cleanly sends leave. A member whose pings go unanswered while its RPC
connection is up is probed over RPC before it is suspected, so a network
that drops UDP does not make a healthy node flap.

A source address whose packets do not open with our key (a node of another
cluster, or one with another encryption-key) is logged once per
L{UNOPENED_LOG_INTERVAL} (60 s), with the count since the last line, in a
table of at most 1,000 addresses (L{stalwart_tw.logs.LogThrottle}).

A member offline or left for more than L{FORGET_AFTER} (24 hours) is
forgotten at the next round: it leaves the table and the member lists, and
its RPC link is dropped. Its last (generation, epoch) is kept for another
L{FORGET_AFTER}, so a stale sample or a replayed packet cannot bring it
back; a packet newer than that (it restarted, or kept counting behind a
partition) welcomes it again like any new member.
"""

import ipaddress
import os
import re
import time
from dataclasses import dataclass, field

import msgpack
from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall

from stalwart_tw.cluster.failure import ALIVE, OFFLINE, SUSPECTED, PhiAccrual, state_of
from stalwart_tw.logs import LOG_INTERVAL, LogThrottle
from stalwart_tw.logs import Logger

MAX_PACKET = 1400
NONCE_SIZE = 12
KEY_CONTEXT = "stalwart-tw 2026-12-03 gossip packet sealing key"
ASSOCIATED_DATA = b"stalwart-tw gossip v1"
SAMPLE_MAX = 16
# Counters stay far below 64 bits: epochs grow a few a second, and a node
# that has reached the bound cannot have been pushed there honestly.
COUNTER_MAX = 2**48
# An epoch more than this ahead of the one known is not believed (at most
# one per ping interval: 2**24 is years of pings).
EPOCH_JUMP_MAX = 2**24
# The most entries a member list over RPC may hold.
MEMBER_LIST_MAX = 10_000
LEFT = "left"
# A silent peer with an RPC connection up is probed over it from this phi.
PROBE_PHI = 3.0
# Seconds between two lines about one address sending packets we cannot open.
UNOPENED_LOG_INTERVAL = LOG_INTERVAL
# Seconds a member stays offline or left before it is forgotten.
FORGET_AFTER = 24 * 3600.0

JOIN, JOIN_REPLY, PING, PONG, LEAVE = 1, 2, 3, 4, 5
_KINDS = frozenset({JOIN, JOIN_REPLY, PING, PONG, LEAVE})

# RPC methods gossip serves.
MEMBERS_METHOD = "gossip.members"
PROBE_METHOD = "gossip.probe"


class PacketRejected(Exception):
    """
    A datagram that is not a gossip packet of this cluster.

    @ivar reason: the counter it is counted under.
    """

    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason


def derive_key(encryption_key):
    """
    @return: the 32-byte packet key of a cluster's encryption-key.
    """
    if isinstance(encryption_key, str):
        encryption_key = encryption_key.encode("utf-8")
    return blake3(encryption_key, derive_key_context=KEY_CONTEXT).digest()


class PacketSeal:
    """
    Seals and opens packets under one cluster key.
    """

    def __init__(self, encryption_key, random_bytes=os.urandom):
        self._aead = AESGCMSIV(derive_key(encryption_key))
        self._random_bytes = random_bytes

    def seal(self, plain):
        nonce = self._random_bytes(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plain, ASSOCIATED_DATA)

    def open(self, packet):
        """
        @raise PacketRejected: too large, too short, or not sealed with
            this cluster's key (or changed on the way).
        """
        if len(packet) > MAX_PACKET:
            raise PacketRejected("oversize", f"{len(packet)} bytes")
        if len(packet) < NONCE_SIZE + 16:
            raise PacketRejected("unopened", "shorter than a sealed packet")
        try:
            return self._aead.decrypt(packet[:NONCE_SIZE], packet[NONCE_SIZE:], ASSOCIATED_DATA)
        except InvalidTag:
            raise PacketRejected("unopened", "does not open with this cluster's key") from None


@dataclass(frozen=True)
class Summary:
    """
    What a packet says of one member.
    """

    node_id: str
    generation: int
    epoch: int
    term: int
    index: int
    host: str
    port: int

    def encode(self):
        return [bytes.fromhex(self.node_id), self.generation, self.epoch, self.term,
                self.index, self.host, self.port]

    @classmethod
    def decode(cls, value):
        if not isinstance(value, list) or len(value) != 7:
            raise PacketRejected("malformed", "a member summary is not 7 items")
        raw_id, generation, epoch, term, index, host, port = value
        if not isinstance(raw_id, bytes) or len(raw_id) != 8:
            raise PacketRejected("malformed", "a peer id is not 8 bytes")
        for number in (generation, epoch, term, index):
            if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < COUNTER_MAX:
                raise PacketRejected("malformed", "a counter is not a non-negative integer")
        if not isinstance(host, str) or not 0 < len(host) <= 253:
            raise PacketRejected("malformed", "an address is not a host name")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise PacketRejected("malformed", "a port is out of range")
        return cls(raw_id.hex(), generation, epoch, term, index, host, port)

    def newer_than(self, generation, epoch):
        return (self.generation, self.epoch) > (generation, epoch)


def encode_packet(kind, sender, sample, extra=None):
    return msgpack.packb(
        [kind, sender.encode(), [member.encode() for member in sample], extra or {}],
        use_bin_type=True,
    )


def decode_packet(plain):
    """
    @return: C{(kind, sender Summary, [Summary], extra dict)}.
    @raise PacketRejected: under "malformed".
    """
    try:
        value = msgpack.unpackb(plain, raw=False, strict_map_key=True, max_bin_len=MAX_PACKET,
                                max_str_len=MAX_PACKET, max_array_len=MAX_PACKET,
                                max_map_len=16)
    except Exception as error:
        raise PacketRejected("malformed", f"not msgpack ({type(error).__name__})") from None
    if not isinstance(value, list) or len(value) != 4:
        raise PacketRejected("malformed", "a packet is not 4 items")
    kind, sender, sample, extra = value
    if not isinstance(kind, int) or kind not in _KINDS:
        raise PacketRejected("malformed", f"unknown packet kind {kind!r}")
    if not isinstance(sample, list) or not isinstance(extra, dict):
        raise PacketRejected("malformed", "the sample or the extra part has the wrong type")
    return kind, Summary.decode(sender), [Summary.decode(item) for item in sample], extra


@dataclass
class Member:
    """
    A peer as this node knows it.
    """

    node_id: str
    host: str
    port: int
    generation: int
    epoch: int
    term: int = 0
    index: int = 0
    jmap_url: str = None
    role: str = None
    state: str = ALIVE
    # Clock time of the last change of state (or of joining).
    state_since: float = None
    last_seen: float = None
    detector: PhiAccrual = field(default=None, repr=False)

    @property
    def address(self):
        return (self.host, self.port)


def parse_seed(text, default_port):
    """
    @return: C{(host, port)} of a seed-nodes item: C{host}, C{host:port},
        C{[v6]:port} or a bare IPv6 address.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def is_ip(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Gossip(DatagramProtocol):
    """
    The gossip of one node.

    @param node_id: this node's peer id; @param generation: its generation.
    @param advertised: C{(host, port)} others reach this node at.
    @param jmap_url: this node's jmap-url; @param role: voter or replica.
    @param seeds: C{(host, port)} of the seed nodes (host names resolved
        with the reactor's resolver, never blocking).
    @param rpc: the node's RPC client (C{call(address, method, payload)},
        C{state(address)}, C{peer_alive(address)}, C{forget(address)}), or
        C{None}.
    @param clock: the reactor (IReactorTime, and IReactorCore for resolve).
    @param wall_clock: seconds since the epoch, for the admin table.
    """

    log = Logger()
    noisy = False

    def __init__(self, node_id, generation, advertised, jmap_url, role, encryption_key,
                 ping_interval, seeds=(), rpc=None, clock=None, wall_clock=time.time):
        if clock is None:
            from twisted.internet import reactor as clock
        # Who this node is, as its packets say.
        self.node_id = node_id
        self.generation = generation
        self.advertised = advertised
        self.jmap_url = jmap_url
        self.role = role
        # This node's Lamport clock: one more every round.
        self.epoch = 0
        # The last Raft log term and index, for peers to compare.
        self.term = 0
        self.index = 0
        # Peer id -> Member, every peer heard of and not forgotten (left
        # ones included).
        self.members = {}
        # Peer id -> (generation, epoch, clock time) of forgotten members:
        # only newer news of them brings them back.
        self._forgotten = {}
        # Packets dropped, by reason.
        self.dropped = {"oversize": 0, "unopened": 0, "malformed": 0, "unsendable": 0}
        self._seal = PacketSeal(encryption_key)
        # Seconds between rounds (peer-ping-interval).
        self._interval = ping_interval
        # (host, port) of seed-nodes, asked to join until anyone answers.
        self._seeds = list(seeds)
        # The RPC client, for member lists and probes (None: no RPC).
        self.rpc = rpc
        self._clock = clock
        self._wall_clock = wall_clock
        # Source addresses of packets that do not open, logged once an interval.
        self._unopened_log = LogThrottle(clock, UNOPENED_LOG_INTERVAL)
        # Heard from any member: no more join packets.
        self._joined = not self._seeds
        # Peer ids still to ping in this turn, popped from the end.
        self._turn = []
        # Where the next rotating sample starts in the sorted members.
        self._sample_offset = 0
        # Peer ids with a member-list fetch or a probe in progress.
        self._fetching = set()
        self._probing = set()
        self._listeners = []
        self._loop = None

    # -- the node's view ---------------------------------------------------

    def add_listener(self, listener):
        """
        Call C{listener(member, old_state, new_state)} on every transition.
        """
        self._listeners.append(listener)

    def summary(self):
        host, port = self.advertised
        return Summary(self.node_id, self.generation, self.epoch, self.term, self.index,
                       host, port)

    def full_info(self):
        host, port = self.advertised
        return {"id": self.node_id, "host": host, "port": port, "generation": self.generation,
                "epoch": self.epoch, "jmapUrl": self.jmap_url, "role": self.role}

    def table(self):
        """
        @return: the members as the admin sees them, sorted by id.
        """
        now = self._clock.seconds()
        rows = []
        for member in sorted(self.members.values(), key=lambda m: m.node_id):
            phi = member.detector.phi(now) if member.state != LEFT else 0.0
            last_seen = None
            if member.last_seen is not None:
                last_seen = self._wall_clock() - (now - member.last_seen)
            rows.append({
                "id": member.node_id,
                "rpc": _host_port(member.host, member.port),
                "jmapUrl": member.jmap_url,
                "state": member.state,
                "phi": round(phi, 2),
                "epoch": member.epoch,
                "generation": member.generation,
                "lastSeen": last_seen,
                "role": member.role,
                "rpcConnection": None if self.rpc is None else self.rpc.state(member.address),
            })
        return rows

    # -- the protocol's life -------------------------------------------------

    def startProtocol(self):
        self._loop = LoopingCall(self._round)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stopProtocol(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def leave(self):
        """
        Tell every member this node is going (a clean shutdown).
        """
        # No ping may follow the goodbye and bring this node back to life.
        self.stopProtocol()
        self.epoch += 1
        packet = self._packet(LEAVE, [])
        for member in self.members.values():
            if member.state != LEFT:
                self._send(packet, member.address)

    def _round(self):
        self.epoch += 1
        if not self._joined:
            for host, port in self._seeds:
                self._send(self._packet(JOIN, [], self._card()), (host, port))
        target = self._next_target()
        if target is not None:
            self._send(self._packet(PING, self._sample()), target.address)
        self._judge()

    def _card(self):
        # What a joining node says of itself that the summary has no room for.
        return {"u": self.jmap_url or "", "r": self.role or ""}

    def _next_target(self):
        if not self._turn:
            self._turn = sorted(
                (m.node_id for m in self.members.values() if m.state != LEFT), reverse=True
            )
        while self._turn:
            member = self.members.get(self._turn.pop())
            if member is not None and member.state != LEFT:
                return member
        return None

    def _judge(self):
        now = self._clock.seconds()
        self._sweep(now)
        for member in list(self.members.values()):
            if member.state == LEFT:
                continue
            phi = member.detector.phi(now)
            if phi >= PROBE_PHI and self.rpc is not None:
                # Well before suspicion: a probe answered over RPC is a
                # heartbeat, so lost UDP alone never makes a peer suspected.
                self._probe(member)
            state = state_of(phi)
            if state != member.state:
                self._transition(member, state)

    def _sweep(self, now):
        for node_id, (_, _, since) in list(self._forgotten.items()):
            if now - since > FORGET_AFTER:
                del self._forgotten[node_id]
        for member in list(self.members.values()):
            if member.state in (OFFLINE, LEFT) and now - member.state_since > FORGET_AFTER:
                self._forget(member, now)

    def _forget(self, member, now):
        del self.members[member.node_id]
        self._forgotten[member.node_id] = (member.generation, member.epoch, now)
        self.log.info("cluster: forgetting peer {id} at {address}, {state} for more than "
                      "{hours:g} hours", id=member.node_id,
                      address=_host_port(member.host, member.port), state=member.state,
                      hours=FORGET_AFTER / 3600)
        # Another member may have taken the address over: its link stays.
        if self.rpc is not None and all(m.address != member.address
                                        for m in self.members.values()):
            self.rpc.forget(member.address)

    def _still_forgotten(self, summary):
        forgotten = self._forgotten.get(summary.node_id)
        if forgotten is None:
            return False
        if not summary.newer_than(forgotten[0], forgotten[1]):
            return True
        del self._forgotten[summary.node_id]
        return False

    def _transition(self, member, state):
        old, member.state = member.state, state
        member.state_since = self._clock.seconds()
        self.log.info("cluster: peer {id} at {address} is {state} (was {old})",
                      id=member.node_id, address=_host_port(member.host, member.port),
                      state=state, old=old)
        for listener in self._listeners:
            listener(member, old, state)

    # -- packets in ------------------------------------------------------------

    def datagramReceived(self, data, address):
        try:
            kind, sender, sample, extra = decode_packet(self._seal.open(data))
        except PacketRejected as rejected:
            self.dropped[rejected.reason] += 1
            if rejected.reason == "unopened":
                count = self._unopened_log.admit(address)
                if count is not None:
                    self.log.warn("cluster: dropping packets from {address} that do not open "
                                  "with our key ({count} since the last line)",
                                  address=_host_port(*address), count=count)
            return
        if sender.node_id == self.node_id:
            return
        self._joined = True
        if kind == LEAVE:
            self._left(sender)
            return
        known = self.members.get(sender.node_id)
        fresh = known is None or sender.newer_than(known.generation, known.epoch)
        member = self._observe(sender, source=sender)
        if member is not None and kind == JOIN and fresh:
            # A replayed old join must not bring back an old URL or role.
            self._take_card(member, extra.get("u"), extra.get("r"))
        for item in sample:
            if item.node_id == self.node_id:
                # Lamport: never behind an epoch of ours someone else saw.
                if (item.generation == self.generation
                        and self.epoch < item.epoch <= self.epoch + EPOCH_JUMP_MAX):
                    self.epoch = item.epoch
                continue
            self._observe(item, source=sender)
        if kind == PING:
            self._send(self._packet(PONG, self._sample()), (sender.host, sender.port))
        elif kind == JOIN:
            self._send(self._packet(JOIN_REPLY, self._sample()), (sender.host, sender.port))

    def _observe(self, summary, source):
        now = self._clock.seconds()
        member = self.members.get(summary.node_id)
        if member is None:
            if self._still_forgotten(summary):
                return None
            member = self._add_member(summary, now)
            self._fetch_members(source)
            return member
        if not summary.newer_than(member.generation, member.epoch):
            return member
        if (summary.generation == member.generation
                and summary.epoch > member.epoch + EPOCH_JUMP_MAX):
            # Not a heartbeat anyone could have sent: it would freeze the
            # member's entry. Ignored.
            return member
        restarted = summary.generation != member.generation
        member.generation, member.epoch = summary.generation, summary.epoch
        member.term, member.index = summary.term, summary.index
        member.host, member.port = summary.host, summary.port
        if restarted:
            member.detector = PhiAccrual(self._interval)
            self._fetch_members(summary)
        self._heard(member, now)
        if member.state != ALIVE:
            self._transition(member, ALIVE)
        return member

    def _add_member(self, summary, now):
        member = Member(summary.node_id, summary.host, summary.port, summary.generation,
                        summary.epoch, summary.term, summary.index,
                        state_since=now, detector=PhiAccrual(self._interval))
        self.members[summary.node_id] = member
        self.log.info("cluster: peer {id} at {address} joined", id=member.node_id,
                      address=_host_port(member.host, member.port))
        self._heard(member, now)
        return member

    def _heard(self, member, now):
        member.detector.heartbeat(now)
        member.last_seen = now
        if self.rpc is not None:
            # A peer RPC gave up on may be dialled again: gossip vouches for it.
            self.rpc.peer_alive(member.address)

    def _left(self, sender):
        member = self.members.get(sender.node_id)
        if member is None or not sender.newer_than(member.generation, member.epoch):
            return
        member.generation, member.epoch = sender.generation, sender.epoch
        if member.state != LEFT:
            self._transition(member, LEFT)

    # -- RPC: full member lists, probes ------------------------------------------

    def rpc_handlers(self):
        """
        @return: the RPC methods gossip serves, for the node's RPC server.
        """
        return {
            MEMBERS_METHOD: lambda peer, payload: self._member_list(),
            PROBE_METHOD: lambda peer, payload: self.full_info(),
        }

    def _member_list(self):
        listed = [self.full_info()]
        for member in self.members.values():
            if member.state != LEFT:
                listed.append({
                    "id": member.node_id, "host": member.host, "port": member.port,
                    "generation": member.generation, "epoch": member.epoch,
                    "jmapUrl": member.jmap_url, "role": member.role,
                })
        return listed

    def _fetch_members(self, source):
        if self.rpc is None or source.node_id in self._fetching:
            return
        self._fetching.add(source.node_id)
        fetching = self.rpc.call((source.host, source.port), MEMBERS_METHOD, None)
        fetching.addCallback(self._merge_members)
        fetching.addErrback(self._fetch_failed, source)
        fetching.addBoth(lambda _: self._fetching.discard(source.node_id))

    def _fetch_failed(self, failure, source):
        self.log.debug("cluster: no member list from {address}: {why}",
                       address=_host_port(source.host, source.port),
                       why=failure.getErrorMessage())

    def _merge_members(self, listed):
        if not isinstance(listed, list) or len(listed) > MEMBER_LIST_MAX:
            self.log.warn("cluster: a member list is not a list of at most {most} entries; "
                          "ignored", most=MEMBER_LIST_MAX)
            return
        malformed = 0
        for info in listed:
            try:
                # Decoded as a packet's summary would be: the same checks, and
                # the id in its one spelling.
                if not _NODE_ID.fullmatch(info["id"]):
                    raise ValueError("not a node id")
                summary = Summary.decode([bytes.fromhex(info["id"]), info["generation"],
                                          info["epoch"], 0, 0, info["host"], info["port"]])
                if not is_ip(summary.host) and not _HOST_NAME.fullmatch(summary.host):
                    raise ValueError("not a host name")
            except (KeyError, TypeError, ValueError, AttributeError, PacketRejected):
                malformed += 1
                continue
            if summary.node_id == self.node_id:
                continue
            member = self.members.get(summary.node_id)
            if member is None:
                if self._still_forgotten(summary):
                    continue
                member = self._add_member(summary, self._clock.seconds())
            self._take_card(member, info.get("jmapUrl"), info.get("role"))
        if malformed:
            self.log.warn("cluster: a member list held {count} malformed entries; ignored",
                          count=malformed)

    @staticmethod
    def _take_card(member, jmap_url, role):
        if isinstance(jmap_url, str) and 0 < len(jmap_url) <= 2048:
            member.jmap_url = jmap_url
        if role in ("voter", "replica"):
            member.role = role

    def _probe(self, member):
        if member.node_id in self._probing or self.rpc.state(member.address) != "connected":
            return
        self._probing.add(member.node_id)
        probing = self.rpc.call(member.address, PROBE_METHOD, None)
        probing.addCallback(self._probed, member)
        probing.addErrback(lambda _: None)
        probing.addBoth(lambda _: self._probing.discard(member.node_id))

    def _probed(self, info, member):
        # Alive over TCP although its UDP is lost: that is a heartbeat.
        if not isinstance(info, dict) or info.get("id") != member.node_id:
            return
        self._heard(member, self._clock.seconds())
        if member.state in (SUSPECTED, OFFLINE):
            self._transition(member, ALIVE)

    # -- packets out -------------------------------------------------------------

    def _packet(self, kind, sample, extra=None):
        # Trimmed until the sealed packet fits one datagram.
        while True:
            plain = encode_packet(kind, self.summary(), sample, extra)
            if len(plain) + NONCE_SIZE + 16 <= MAX_PACKET or not sample:
                return self._seal.seal(plain)
            sample = sample[: len(sample) // 2]

    def _sample(self):
        known = [m for m in self.members.values() if m.state != LEFT]
        if not known:
            return []
        known.sort(key=lambda m: m.node_id)
        self._sample_offset = (self._sample_offset + SAMPLE_MAX) % len(known)
        start = self._sample_offset
        chosen = (known[start:] + known[:start])[:SAMPLE_MAX]
        return [Summary(m.node_id, m.generation, m.epoch, m.term, m.index, m.host, m.port)
                for m in chosen]

    def _send(self, packet, address):
        # A member may advertise a host name: resolved without blocking.
        host, port = address
        if not is_ip(host):
            self._send_to_host(packet, host, port)
            return
        if self.transport is None:
            return
        try:
            self.transport.write(packet, address)
        except Exception as error:
            # An address this socket cannot reach (another IP family): the
            # packet is lost, as UDP packets may be; gossip goes on.
            self.dropped["unsendable"] += 1
            self.log.debug("cluster: cannot send to {address}: {why}",
                           address=_host_port(host, port), why=error)

    def _send_to_host(self, packet, host, port):
        resolving = self._clock.resolve(host)
        resolving.addCallback(lambda ip: self._send(packet, (ip, port)) if is_ip(ip) else None)
        resolving.addErrback(lambda failure: self.log.warn(
            "cluster: {host} does not resolve: {why}", host=host,
            why=failure.getErrorMessage()))


_NODE_ID = re.compile(r"[0-9a-f]{16}")
_HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def _host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
