"""
The Raft consensus core: a plain object with no I/O, no clock and no
randomness of its own.

The node feeds it messages (L{RaftCore.step}), the time (L{RaftCore.tick})
and requests (propose, read index, membership changes, leadership
transfer); each returns a list of actions for the node to carry out in
order. A L{Persist} must be durable before any L{Send} after it in the list
leaves the node: that is how a vote or an entry is never promised before it
is on disk.

What it implements (Ongaro's dissertation, with etcd's refinements):
 - randomised election timeouts in [T, 2T), PreVote (which never changes a
   term), and a lease: a voter that heard from a leader within the minimum
   election timeout grants no vote, so a rejoining node cannot depose a
   healthy leader;
 - check quorum: a leader that has not heard from a majority within an
   election timeout steps down;
 - log replication with fast back-off (a follower answers a conflict with
   the term at the conflicting index and the first index of that term),
   AppendEntries bounded in bytes and in number in flight, a probe state
   after a rejection;
 - a new leader appends a no-op of its term; only entries of the leader's
   own term are committed by counting replicas;
 - read index, answered once a heartbeat round confirms leadership;
 - leadership transfer (the target is brought up to date, then told to
   campaign at once);
 - single-server membership changes through the log: learners never vote
   nor count to a quorum.
"""

from dataclasses import dataclass, field
from typing import Optional

FOLLOWER = "follower"
PRE_CANDIDATE = "pre-candidate"
CANDIDATE = "candidate"
LEADER = "leader"

# Entry payloads: the first byte says what the entry is.
NOOP = b""
DATA_PREFIX = b"D"
CONFIG_PREFIX = b"C"

# Follower progress, as the leader tracks it.
PROBE = "probe"
REPLICATE = "replicate"
STALL_HEARTBEATS = 3


# -- log records ----------------------------------------------------------
# Defined here, not in log.py, so that the core loads no storage code; the
# durable log (log.py) stores and loads these.


@dataclass(frozen=True)
class Entry:
    """
    One entry of the Raft log. C{data} is empty for a no-op and otherwise
    starts with L{DATA_PREFIX} or L{CONFIG_PREFIX}; the durable log stores it
    as opaque bytes.
    """

    term: int
    index: int
    data: bytes


@dataclass(frozen=True)
class HardState:
    """
    What Raft must remember across a restart besides the entries.
    """

    # The latest term this node has seen.
    term: int = 0
    # The peer id this node voted for in that term, or None.
    vote: Optional[str] = None


# -- messages -------------------------------------------------------------


@dataclass(frozen=True)
class VoteRequest:
    source: str
    target: str
    term: int
    last_index: int
    last_term: int
    pre: bool = False
    # Sent on a leader's request (TimeoutNow): voters waive their lease.
    transfer: bool = False


@dataclass(frozen=True)
class VoteResponse:
    source: str
    target: str
    term: int
    granted: bool
    pre: bool = False


@dataclass(frozen=True)
class AppendEntries:
    source: str
    target: str
    term: int
    prev_index: int
    prev_term: int
    entries: tuple
    commit: int
    # The leader's heartbeat round, echoed back: confirms read indexes.
    round: int = 0
    # A heartbeat: not counted against the in-flight window.
    heartbeat: bool = False


@dataclass(frozen=True)
class AppendResponse:
    source: str
    target: str
    term: int
    success: bool
    # On success: the last index known to match the leader's log.
    match_index: int = 0
    # On rejection: where the follower's log stops agreeing.
    conflict_index: int = 0
    conflict_term: Optional[int] = None
    round: int = 0
    heartbeat: bool = False


@dataclass(frozen=True)
class ReadIndexRequest:
    source: str
    target: str
    term: int
    context: object


@dataclass(frozen=True)
class ReadIndexResponse:
    source: str
    target: str
    term: int
    context: object
    index: int
    ok: bool


@dataclass(frozen=True)
class TimeoutNow:
    source: str
    target: str
    term: int


# -- actions --------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    message: object


@dataclass(frozen=True)
class Persist:
    """Make these durable before any later Send leaves."""

    hard_state: Optional[HardState]
    append: tuple
    truncate_from: Optional[int] = None


@dataclass(frozen=True)
class Apply:
    """Committed entries, in order, for the state machine."""

    entries: tuple


@dataclass(frozen=True)
class RoleChanged:
    role: str
    term: int
    leader: Optional[str]


@dataclass(frozen=True)
class ReadReady:
    """A read may be served once the state machine has applied C{index}."""

    context: object
    index: int


@dataclass(frozen=True)
class ReadFailed:
    context: object


@dataclass(frozen=True)
class SnapshotWanted:
    """A follower needs entries compacted away: send it a snapshot."""

    peer: str
    index: int


class NotLeader(Exception):
    """
    A proposal reached a node that is not the leader (or is handing over).

    @ivar leader: the leader's id when known.
    """

    def __init__(self, leader):
        super().__init__(f"not the leader (the leader is {leader})")
        self.leader = leader


@dataclass
class Progress:
    """What the leader knows of one peer."""

    # The next index to send.
    next_index: int
    # The highest index known to be replicated there.
    match_index: int = 0
    # PROBE: one AppendEntries at a time until one succeeds; REPLICATE: pipelined.
    state: str = PROBE
    # AppendEntries sent and not yet answered (REPLICATE).
    in_flight: int = 0
    # Heard from within the current check-quorum window.
    active: bool = False
    # The last heartbeat round the peer acknowledged.
    round: int = 0
    # Heartbeats sent while the peer lagged and its match index stood still:
    # its appends were lost, so it is probed again (retransmission).
    stalled: int = 0


@dataclass(frozen=True)
class Config:
    """Who votes and who only follows."""

    voters: frozenset
    learners: frozenset = frozenset()

    def encode(self):
        return CONFIG_PREFIX + (
            ",".join(sorted(self.voters)) + "|" + ",".join(sorted(self.learners))
        ).encode()

    @classmethod
    def decode(cls, data):
        voters, _, learners = data[1:].decode().partition("|")
        return cls(frozenset(v for v in voters.split(",") if v),
                   frozenset(v for v in learners.split(",") if v))


@dataclass
class _PendingRead:
    context: object
    index: int
    round: int
    # The peer that asked (a follower), or None when asked here.
    requester: Optional[str]
    acks: set = field(default_factory=set)


class RaftCore:
    """
    One node's Raft state.

    @param node_id: this node's id.
    @param config: the L{Config} at the snapshot (or the cluster's first).
    @param random: a C{random.Random}-like source (C{random()}), seeded by
        the caller; elections are randomised only through it.
    @param election_timeout: T, in the caller's time unit; the timeout is
        drawn from [T, 2T), heartbeats go every T/10.
    @param hard_state, snapshot_index, snapshot_term, entries: what the
        durable log loaded at start.
    @param batch_max: the most bytes of entries in one AppendEntries.
    @param in_flight_max: the most AppendEntries unanswered per follower.
    """

    def __init__(self, node_id, config, random, election_timeout, now=0.0,
                 hard_state=None, snapshot_index=0, snapshot_term=0, entries=(),
                 batch_max=10 * 1024 * 1024, in_flight_max=64, replica=False):
        self.id = node_id
        self._random = random
        self.election_timeout = election_timeout
        self.heartbeat_interval = election_timeout / 10.0
        self.batch_max = batch_max
        self.in_flight_max = in_flight_max
        # A replica never campaigns, even if a config lists it as a voter.
        self.replica = replica
        hard_state = hard_state or HardState(0, None)
        # Durable: the latest term seen and the vote cast in it.
        self.term = hard_state.term
        self.vote = hard_state.vote
        # The log after the snapshot; entries[i].index == snapshot_index + 1 + i.
        self.entries = list(entries)
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        # The config at the snapshot, and the one in force (the latest in the log).
        self._base_config = config
        self.config = self._config_from_log()
        # Volatile: the highest index known committed, and handed to Apply.
        self.commit_index = snapshot_index
        self.applied_index = snapshot_index
        self.role = FOLLOWER
        self.leader = None
        self.now = now
        # When a leader was last heard from (the lease of PreVote and votes).
        self._leader_contact = None
        self._election_deadline = now
        self._reset_election_timer()
        # Candidate: ids that granted the (pre-)vote.
        self._votes = set()
        # Leader state.
        self.progress = {}
        self._heartbeat_deadline = now
        self._quorum_deadline = now
        self._round = 0
        self._reads = []
        self._waiting_reads = []
        self._transfer_target = None
        self._transfer_deadline = None

    # -- queries ------------------------------------------------------------

    @property
    def last_index(self):
        return self.entries[-1].index if self.entries else self.snapshot_index

    @property
    def last_term(self):
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term_at(self, index):
        """@return: the term of the entry at C{index}, or None if unknown."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self.entries[index - self.snapshot_index - 1].term

    def entry(self, index):
        return self.entries[index - self.snapshot_index - 1]

    def hard_state(self):
        return HardState(self.term, self.vote)

    def is_voter(self, node_id=None):
        return (node_id or self.id) in self.config.voters

    def _quorum(self):
        return len(self.config.voters) // 2 + 1

    # -- time -----------------------------------------------------------------

    def tick(self, now):
        """
        The time is now C{now}: campaign, send heartbeats, check quorum,
        give up a transfer, as due.
        """
        self.now = now
        actions = []
        if self.role == LEADER:
            if now >= self._heartbeat_deadline:
                actions += self._broadcast_heartbeat()
            if now >= self._quorum_deadline:
                actions += self._check_quorum()
            if self._transfer_target is not None and now >= self._transfer_deadline:
                self._transfer_target = None
        elif now >= self._election_deadline and self._can_campaign():
            actions += self._start_pre_vote()
        return actions

    def _can_campaign(self):
        return self.is_voter() and not self.replica

    def _reset_election_timer(self):
        spread = self._random.random() * self.election_timeout
        self._election_deadline = self.now + self.election_timeout + spread

    def leader_suspected(self):
        """
        Gossip suspects the leader: campaign at the next tick rather than
        after the election timeout. It is only a PreVote: the others still
        refuse it while they hear from a leader.
        """
        if self.role == FOLLOWER and self._can_campaign():
            self._election_deadline = self.now
        return []

    def compact(self, up_to_index):
        """
        Forget the entries up to C{up_to_index} (applied, and now in a
        snapshot of the state machine); a peer that needs them gets a
        L{SnapshotWanted}.
        """
        if up_to_index > self.applied_index:
            raise ValueError(f"entry {up_to_index} is not applied yet")
        if up_to_index <= self.snapshot_index:
            return
        self._base_config = self._config_at(up_to_index)
        self.snapshot_term = self.term_at(up_to_index)
        del self.entries[:up_to_index - self.snapshot_index]
        self.snapshot_index = up_to_index

    def _config_at(self, index):
        config = self._base_config
        for entry in self.entries:
            if entry.index > index:
                break
            if entry.data[:1] == CONFIG_PREFIX:
                config = Config.decode(entry.data)
        return config

    # -- campaigning ----------------------------------------------------------

    def _start_pre_vote(self):
        self._reset_election_timer()
        self.role = PRE_CANDIDATE
        self._votes = {self.id}
        if len(self._votes) >= self._quorum():
            return self._start_election(transfer=False)
        return [
            Send(VoteRequest(self.id, peer, self.term + 1, self.last_index, self.last_term,
                             pre=True))
            for peer in sorted(self.config.voters - {self.id})
        ]

    def _start_election(self, transfer):
        self._reset_election_timer()
        self.role = CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader = None
        self._votes = {self.id}
        actions = [Persist(self.hard_state(), ()), RoleChanged(CANDIDATE, self.term, None)]
        if len(self._votes) >= self._quorum():
            return actions + self._become_leader()
        for peer in sorted(self.config.voters - {self.id}):
            actions.append(Send(VoteRequest(self.id, peer, self.term, self.last_index,
                                            self.last_term, transfer=transfer)))
        return actions

    def _log_up_to_date(self, last_index, last_term):
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def _in_lease(self):
        # A leader, or heard from one within the minimum election timeout.
        if self.role == LEADER:
            return True
        return (self._leader_contact is not None
                and self.now - self._leader_contact < self.election_timeout)

    # -- stepping -------------------------------------------------------------

    def step(self, message):
        """
        Take in one message from a peer.
        """
        actions = []
        if message.term > self.term:
            if isinstance(message, VoteRequest):
                if message.pre:
                    return self._answer_vote(message)
                if self._in_lease() and not message.transfer:
                    # A leader is alive: ignore a disruptive candidate.
                    return []
            elif isinstance(message, VoteResponse) and message.pre and message.granted:
                return self._count_vote(message)
            leader = message.source if isinstance(message, AppendEntries) else None
            actions += self._become_follower(message.term, leader)
        elif message.term < self.term:
            if isinstance(message, (AppendEntries, ReadIndexRequest)) or (
                isinstance(message, VoteRequest) and message.pre
            ):
                # Tell a stale leader or candidate the term, so it steps down.
                return actions + self._reject_stale(message)
            return actions
        handler = getattr(self, self._HANDLERS[type(message)])
        return actions + handler(message)

    def _reject_stale(self, message):
        if isinstance(message, AppendEntries):
            return [Send(AppendResponse(self.id, message.source, self.term, False,
                                        conflict_index=self.last_index + 1))]
        if isinstance(message, VoteRequest):
            return [Send(VoteResponse(self.id, message.source, self.term, False, pre=True))]
        return [Send(ReadIndexResponse(self.id, message.source, self.term, message.context,
                                       0, False))]

    def _become_follower(self, term, leader):
        changed = term != self.term
        was = (self.role, self.leader)
        if changed:
            self.term = term
            self.vote = None
        if self.role == LEADER:
            self._fail_reads()
        self.role = FOLLOWER
        self.leader = leader
        self.progress = {}
        self._transfer_target = None
        self._reset_election_timer()
        actions = []
        if changed:
            actions.append(Persist(self.hard_state(), ()))
        if changed or was != (FOLLOWER, leader):
            actions.append(RoleChanged(FOLLOWER, self.term, leader))
        return actions + self._fail_waiting_reads()

    def _answer_vote(self, message):
        grant = self.is_voter() and self._log_up_to_date(message.last_index, message.last_term)
        if message.pre:
            # A pre-vote changes nothing here: no term, no vote. It is for
            # the candidate's next term, and not while a leader is alive.
            grant = grant and message.term > self.term and (
                message.transfer or not self._in_lease())
            term = message.term if grant else self.term
            return [Send(VoteResponse(self.id, message.source, term, grant, pre=True))]
        # (The lease was checked in step, before the term moved.)
        grant = grant and self.vote in (None, message.source)
        if not grant:
            return [Send(VoteResponse(self.id, message.source, self.term, False))]
        self.vote = message.source
        self._reset_election_timer()
        return [Persist(self.hard_state(), ()),
                Send(VoteResponse(self.id, message.source, self.term, True))]

    def _on_vote_request(self, message):
        return self._answer_vote(message)

    def _count_vote(self, message):
        expected = PRE_CANDIDATE if message.pre else CANDIDATE
        if self.role != expected:
            return []
        if message.pre and message.term != self.term + 1:
            return []
        if message.granted:
            self._votes.add(message.source)
            if len(self._votes & self.config.voters) >= self._quorum():
                if message.pre:
                    return self._start_election(transfer=False)
                return self._become_leader()
        return []

    def _on_vote_response(self, message):
        return self._count_vote(message)

    # -- leading ---------------------------------------------------------------

    def _become_leader(self):
        self.role = LEADER
        self.leader = self.id
        self._round = 0
        self.progress = {
            peer: Progress(next_index=self.last_index + 1)
            for peer in self.config.voters | self.config.learners if peer != self.id
        }
        self._heartbeat_deadline = self.now
        self._quorum_deadline = self.now + self.election_timeout
        noop = Entry(self.term, self.last_index + 1, NOOP)
        actions = [RoleChanged(LEADER, self.term, self.id)]
        actions += self._append_local([noop])
        actions += self._maybe_commit()
        actions += self._broadcast_append()
        return actions

    def _append_local(self, entries):
        self.entries.extend(entries)
        actions = [Persist(None, tuple(entries))]
        if any(e.data[:1] == CONFIG_PREFIX for e in entries):
            self._apply_config_change()
        return actions

    def propose(self, data):
        """
        Append C{data} as a new entry (leader only).

        @return: C{(index, actions)}.
        @raise NotLeader: not the leader, or handing leadership over.
        """
        indexes, actions = self.propose_batch([data])
        return indexes[0], actions

    def propose_batch(self, datas):
        """
        Append several entries at once: one round of AppendEntries carries
        them all (the node batches what arrives in one turn).

        @return: C{(list of indexes, actions)}.
        @raise NotLeader: not the leader, or handing leadership over.
        """
        if self.role != LEADER or self._transfer_target is not None:
            raise NotLeader(self.leader if self.role != LEADER else None)
        first = self.last_index + 1
        entries = [Entry(self.term, first + n, DATA_PREFIX + data)
                   for n, data in enumerate(datas)]
        actions = self._append_local(entries)
        actions += self._maybe_commit()
        actions += self._broadcast_append()
        return [entry.index for entry in entries], actions

    def _broadcast_append(self):
        actions = []
        for peer in sorted(self.progress):
            actions += self._send_append(peer)
        return actions

    def _send_append(self, peer):
        progress = self.progress[peer]
        if progress.state == PROBE and progress.in_flight:
            return []
        if progress.state == REPLICATE and progress.in_flight >= self.in_flight_max:
            return []
        prev_index = progress.next_index - 1
        prev_term = self.term_at(prev_index)
        if prev_term is None:
            # Compacted away: only a snapshot can bring this peer up.
            return [SnapshotWanted(peer, self.snapshot_index)]
        entries, size = [], 0
        for index in range(progress.next_index, self.last_index + 1):
            entry = self.entry(index)
            if entries and size + len(entry.data) > self.batch_max:
                break
            entries.append(entry)
            size += len(entry.data)
        if not entries and progress.state == REPLICATE:
            return []
        commit = min(self.commit_index, prev_index + len(entries))
        progress.in_flight += 1
        if progress.state == REPLICATE and entries:
            progress.next_index = entries[-1].index + 1
        return [Send(AppendEntries(self.id, peer, self.term, prev_index, prev_term,
                                   tuple(entries), commit, self._round))]

    def _broadcast_heartbeat(self):
        self._heartbeat_deadline = self.now + self.heartbeat_interval
        self._round += 1
        actions = []
        for peer in sorted(self.progress):
            progress = self.progress[peer]
            if progress.match_index < self.last_index:
                progress.stalled += 1
                if progress.stalled >= STALL_HEARTBEATS:
                    progress.stalled = 0
                    progress.state = PROBE
                    progress.in_flight = 0
                    progress.next_index = max(progress.match_index, self.snapshot_index) + 1
                    actions += self._send_append(peer)
                    continue
            # Not behind the snapshot: a new leader knows no match yet, and
            # a follower holding the snapshot's prefix answers from there.
            prev_index = max(min(progress.match_index, self.last_index), self.snapshot_index)
            prev_term = self.term_at(prev_index)
            if prev_term is None:
                actions.append(SnapshotWanted(peer, self.snapshot_index))
                continue
            actions.append(Send(AppendEntries(
                self.id, peer, self.term, prev_index, prev_term, (),
                min(self.commit_index, progress.match_index), self._round, heartbeat=True)))
        return actions + self._confirm_reads()

    def _check_quorum(self):
        self._quorum_deadline = self.now + self.election_timeout
        active = {self.id} | {p for p, progress in self.progress.items() if progress.active}
        for progress in self.progress.values():
            progress.active = False
        if len(active & self.config.voters) >= self._quorum():
            return []
        return self._become_follower(self.term, None)

    def _on_append_response(self, message):
        if self.role != LEADER or message.source not in self.progress:
            return []
        progress = self.progress[message.source]
        progress.active = True
        if not message.heartbeat:
            progress.in_flight = max(progress.in_flight - 1, 0)
        if message.round > progress.round:
            progress.round = message.round
        actions = []
        if message.success:
            if message.match_index > progress.match_index:
                progress.match_index = message.match_index
                progress.stalled = 0
            if progress.state == PROBE and progress.match_index + 1 >= progress.next_index:
                # The probe landed: from here, send without waiting.
                progress.state = REPLICATE
                progress.in_flight = 0
            progress.next_index = max(progress.next_index, progress.match_index + 1)
            actions += self._maybe_commit()
            actions += self._continue_transfer(message.source)
        else:
            progress.state = PROBE
            progress.in_flight = 0
            progress.next_index = max(progress.match_index + 1, self._back_off(message))
        actions += self._confirm_reads()
        if progress.next_index <= self.last_index:
            actions += self._send_append(message.source)
        return actions

    def _back_off(self, message):
        # Skip a whole conflicting term at once (fast back-off).
        if message.conflict_term is None:
            return min(message.conflict_index, self.last_index + 1)
        for entry in reversed(self.entries):
            if entry.term == message.conflict_term:
                return entry.index + 1
            if entry.term < message.conflict_term:
                break
        return message.conflict_index

    def _maybe_commit(self):
        candidate = self._quorum_match()
        if (candidate is not None and candidate > self.commit_index
                and self._commits_by_counting(candidate)):
            self.commit_index = candidate
            actions = self._apply_committed()
            actions += self._release_waiting_reads()
            return actions + self._settle_config()
        return []

    def _quorum_match(self):
        # The highest index a majority of voters holds (this node included
        # when it votes), or None without enough voters known.
        matches = sorted(
            [self.last_index if peer == self.id else self.progress[peer].match_index
             for peer in self.config.voters if peer == self.id or peer in self.progress],
            reverse=True,
        )
        if len(matches) < self._quorum():
            return None
        return matches[self._quorum() - 1]

    def _commits_by_counting(self, index):
        # Only an entry of this term is committed by counting replicas.
        return self.term_at(index) == self.term

    def _apply_committed(self):
        if self.applied_index >= self.commit_index:
            return []
        committed = tuple(self.entry(i)
                          for i in range(self.applied_index + 1, self.commit_index + 1))
        self.applied_index = self.commit_index
        return [Apply(committed)]

    # -- following -----------------------------------------------------------

    def _on_append(self, message):
        if self.role != FOLLOWER or self.leader != message.source:
            actions = self._become_follower(self.term, message.source)
        else:
            actions = []
        self._leader_contact = self.now
        self._reset_election_timer()
        prev_term = self.term_at(message.prev_index)
        if message.prev_index < self.snapshot_index:
            # Already compacted here: committed, so it matches.
            return actions + [Send(AppendResponse(
                self.id, message.source, self.term, True, match_index=self.commit_index,
                round=message.round, heartbeat=message.heartbeat))]
        if prev_term is None or prev_term != message.prev_term:
            if prev_term is None:
                conflict_index, conflict_term = self.last_index + 1, None
            else:
                conflict_term = prev_term
                conflict_index = message.prev_index
                while (conflict_index - 1 > self.snapshot_index
                       and self.term_at(conflict_index - 1) == conflict_term):
                    conflict_index -= 1
            return actions + [Send(AppendResponse(
                self.id, message.source, self.term, False, conflict_index=conflict_index,
                conflict_term=conflict_term, round=message.round,
                heartbeat=message.heartbeat))]
        new_entries, truncate_from = [], None
        for entry in message.entries:
            known = self.term_at(entry.index)
            if known is None:
                new_entries.append(entry)
            elif known != entry.term:
                # Log matching: drop the conflicting suffix, take the leader's.
                truncate_from = entry.index
                del self.entries[entry.index - self.snapshot_index - 1:]
                new_entries.append(entry)
            elif new_entries:
                new_entries.append(entry)
        if truncate_from is not None:
            self.config = self._config_from_log()
        if new_entries:
            self.entries.extend(new_entries)
            if any(e.data[:1] == CONFIG_PREFIX for e in new_entries):
                self._apply_config_change()
            actions.append(Persist(None, tuple(new_entries), truncate_from))
        match = message.prev_index + len(message.entries)
        # Only as far as this message proved the logs match; never back.
        if min(message.commit, match) > self.commit_index:
            self.commit_index = min(message.commit, match)
            actions += self._apply_committed()
        actions.append(Send(AppendResponse(self.id, message.source, self.term, True,
                                           match_index=match, round=message.round,
                                           heartbeat=message.heartbeat)))
        return actions

    def _on_timeout_now(self, message):
        if not self._can_campaign() or self.role == LEADER:
            return []
        return self._start_election(transfer=True)

    # -- membership ------------------------------------------------------------

    def _config_from_log(self):
        config = self._base_config
        for entry in self.entries:
            if entry.data[:1] == CONFIG_PREFIX:
                config = Config.decode(entry.data)
        return config

    def _apply_config_change(self):
        self.config = self._config_from_log()
        if self.role == LEADER:
            for peer in self.config.voters | self.config.learners:
                if peer != self.id and peer not in self.progress:
                    self.progress[peer] = Progress(next_index=self.last_index + 1)
            # A removed peer keeps its progress until the change commits, so
            # it receives the entry that removes it.

    def _settle_config(self):
        # Once a change is committed: forget removed peers, and a leader
        # that removed itself steps down (dissertation, section 4.2.2).
        if self.role != LEADER or self._pending_config():
            return []
        members = self.config.voters | self.config.learners
        for peer in list(self.progress):
            if peer not in members:
                del self.progress[peer]
        if not self.is_voter():
            return self._become_follower(self.term, None)
        return []

    def _pending_config(self):
        return any(e.data[:1] == CONFIG_PREFIX and e.index > self.commit_index
                   for e in self.entries)

    def change_membership(self, add_learner=None, promote=None, remove=None):
        """
        One single-server change through the log (leader only; one at a time).

        @return: C{(index, actions)}.
        @raise NotLeader: not the leader.
        @raise ValueError: another change is not committed yet, or the change
            makes no sense (promoting a non-learner...).
        """
        if self.role != LEADER:
            raise NotLeader(self.leader)
        if self._pending_config():
            raise ValueError("a membership change is still being committed")
        if self.term_at(self.commit_index) != self.term:
            # Until an entry of its term commits, a new leader may not know
            # of a change its predecessor committed (the single-server bug).
            raise ValueError("the leader has not committed an entry of its term yet")
        voters, learners = set(self.config.voters), set(self.config.learners)
        if add_learner is not None:
            if add_learner in voters | learners:
                raise ValueError(f"{add_learner} is already a member")
            learners.add(add_learner)
        elif promote is not None:
            if promote not in learners:
                raise ValueError(f"{promote} is not a learner")
            learners.discard(promote)
            voters.add(promote)
        elif remove is not None:
            if remove not in voters | learners:
                raise ValueError(f"{remove} is not a member")
            voters.discard(remove)
            learners.discard(remove)
            if not voters:
                raise ValueError("the last voter cannot be removed")
        config = Config(frozenset(voters), frozenset(learners))
        entry = Entry(self.term, self.last_index + 1, config.encode())
        actions = self._append_local([entry])
        actions += self._maybe_commit()
        actions += self._broadcast_append()
        return entry.index, actions

    # -- reads -----------------------------------------------------------------

    def read_index(self, context):
        """
        Ask for a linearizable read: a L{ReadReady} follows once this node
        (as leader) has confirmed its leadership, or the leader answered.
        """
        if self.role == LEADER:
            return self._leader_read(context, None)
        if self.leader is None:
            return [ReadFailed(context)]
        self._waiting_reads.append(context)
        return [Send(ReadIndexRequest(self.id, self.leader, self.term, context))]

    def _leader_read(self, context, requester):
        read = _PendingRead(context, self.commit_index, self._round + 1, requester, {self.id})
        if self.term_at(self.commit_index) != self.term:
            # Not a committed entry of this term yet: the commit index may be
            # behind an earlier leader's; wait for the no-op.
            read.index = None
        self._reads.append(read)
        if len(self.config.voters) == 1 and read.index is not None:
            return self._confirm_reads()
        return self._confirm_reads() if read.index is None else self._broadcast_heartbeat()

    def _release_waiting_reads(self):
        actions = []
        if any(read.index is None for read in self._reads):
            for read in self._reads:
                if read.index is None:
                    read.index = self.commit_index
                    read.round = self._round + 1
            actions += self._broadcast_heartbeat()
        return actions

    def _confirm_reads(self):
        actions, waiting = [], []
        for read in self._reads:
            if read.index is None:
                waiting.append(read)
                continue
            acks = {self.id} | {peer for peer, progress in self.progress.items()
                                if progress.round >= read.round}
            if len(acks & self.config.voters) >= self._quorum():
                if read.requester is None:
                    actions.append(ReadReady(read.context, read.index))
                else:
                    actions.append(Send(ReadIndexResponse(
                        self.id, read.requester, self.term, read.context, read.index, True)))
            else:
                waiting.append(read)
        self._reads = waiting
        return actions

    def _fail_reads(self):
        for read in self._reads:
            if read.requester is None:
                self._waiting_reads.append(read.context)
        self._reads = []

    def _fail_waiting_reads(self):
        failed = [ReadFailed(context) for context in self._waiting_reads]
        self._waiting_reads = []
        return failed

    def _on_read_request(self, message):
        if self.role != LEADER:
            return [Send(ReadIndexResponse(self.id, message.source, self.term,
                                           message.context, 0, False))]
        return self._leader_read(message.context, message.source)

    def _on_read_response(self, message):
        if message.context not in self._waiting_reads:
            return []
        self._waiting_reads.remove(message.context)
        if not message.ok:
            return [ReadFailed(message.context)]
        return [ReadReady(message.context, message.index)]

    # -- leadership transfer -----------------------------------------------------

    def transfer_leadership(self, target):
        """
        Hand leadership to C{target}: no new proposals meanwhile; once the
        target's log matches, it is told to campaign at once. Given up after
        an election timeout.
        """
        if self.role != LEADER or target not in self.progress or not self.is_voter(target):
            return []
        self._transfer_target = target
        self._transfer_deadline = self.now + self.election_timeout
        return self._continue_transfer(target) or self._send_append(target)

    def _continue_transfer(self, peer):
        if peer != self._transfer_target:
            return []
        if self.progress[peer].match_index < self.last_index:
            return []
        return [Send(TimeoutNow(self.id, peer, self.term))]

    # By name, so a subclass's handler is the one called.
    _HANDLERS = {
        VoteRequest: "_on_vote_request",
        VoteResponse: "_on_vote_response",
        AppendEntries: "_on_append",
        AppendResponse: "_on_append_response",
        ReadIndexRequest: "_on_read_request",
        ReadIndexResponse: "_on_read_response",
        TimeoutNow: "_on_timeout_now",
    }
