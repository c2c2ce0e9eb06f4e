"""
The durable Raft log: entries, term and vote in the node's SQLite.

The Raft core does no I/O. What it must persist comes out as a persist
action; the node hands it to L{RaftLog.save} and releases the messages that
depend on it only once the Deferred fires, which is after the transaction is
committed and fsync'd (the store runs synchronous=FULL). Saves are applied in
the order they are submitted, so "persist, then send" holds across saves too.

Every record carries a BLAKE3 checksum. At start-up L{RaftLog.load} verifies
them all. Bad records with nothing good after them are a torn tail: they are
dropped, with one warning, and the leader sends them again. A bad record
with a good one after it is not a torn write but damage, and start-up stops
(L{LogCorrupted}) rather than vote, serve or replicate on a log it cannot
trust.

Entries up to the snapshot index are folded into the snapshot (the node's
database at that index) and dropped: only the index and term of the last one
are kept, because AppendEntries' consistency check needs them.

Every method runs on the store's threads (writes on the writer, reads on a
reader) and answers with a Deferred; none blocks the reactor.
"""

import struct
from dataclasses import dataclass

from blake3 import blake3
from sqlalchemy import bindparam, delete, insert, select

# Entry and HardState are the core's records; they stay importable from here.
from stalwart_tw.cluster.raft import Entry, HardState
from stalwart_tw.logs import Logger
from stalwart_tw.store.errors import StoreError
from stalwart_tw.store.schema import raft_log, raft_state

# Rows of raft_state. A missing row has its initial value (0, or no vote):
# a fresh node has none.
TERM = "term"
VOTE = "vote"
SNAPSHOT_INDEX = "snapshot_index"
SNAPSHOT_TERM = "snapshot_term"

_INDEX_AND_TERM = struct.Struct(">QQ")
_NUMBER = struct.Struct(">Q")


class LogCorrupted(StoreError):
    """
    The log on disk is damaged in a way that truncating a torn tail cannot
    explain: a bad record before a good one, a gap, a term going down, or a
    bad state row. The node must not start on it.
    """


class LogCompacted(StoreError):
    """
    Entries were asked for that are already folded into the snapshot: the
    caller (a leader catching up a follower) sends the snapshot instead.
    """


@dataclass(frozen=True)
class LoadedLog:
    """
    The log as found at start-up.
    """

    # The term and vote.
    hard_state: HardState
    # The index of the last entry folded into the snapshot (0: none).
    snapshot_index: int
    # The term of that entry (0: none).
    snapshot_term: int
    # The entries after the snapshot, in index order.
    entries: list


def entry_checksum(index, term, data):
    """
    @return: the checksum of a log record: BLAKE3 of the 8-byte big-endian
        index and term, then the data. The index is covered so that a record
        found at the wrong place fails too.
    """
    hasher = blake3(_INDEX_AND_TERM.pack(index, term))
    hasher.update(data)
    return hasher.digest()


def state_checksum(key, value):
    """
    @return: the checksum of a raft_state row; C{value} is bytes or None,
        and the two never hash alike.
    """
    hasher = blake3(key.encode("ascii") + b"\0")
    hasher.update(b"\0" if value is None else b"\1" + value)
    return hasher.digest()


class RaftLog:
    """
    The Raft log and hard state of one node, kept in its store.

    @param store: an opened L{stalwart_tw.store.engine.Store}.
    """

    log = Logger()

    def __init__(self, store):
        self._store = store

    def load(self):
        """
        Read and verify the whole log, dropping a torn tail in the same
        transaction.

        @return: a Deferred firing with a L{LoadedLog}, or failing with
            L{LogCorrupted} (and then nothing was changed).
        """
        return self._store.write(_load).addCallback(self._report_torn_tail)

    def _report_torn_tail(self, outcome):
        # Logged here, on the reactor thread, once the truncation is durable.
        loaded, torn_count, torn_from = outcome
        if torn_count:
            self.log.warn(
                "dropped a torn tail of {count} Raft log records from index {index} "
                "in {path}",
                count=torn_count,
                index=torn_from,
                path=self._store.database_path,
            )
        return loaded

    def save(self, hard_state=None, append=(), truncate_from=None):
        """
        Persist what the core asks for, in one transaction: delete the
        entries from C{truncate_from} on (a conflicting suffix), append
        C{append}, store C{hard_state}. Several entries in one call share
        one fsync: that is how the node batches.

        Checked before anything is written, each failing with ValueError:
        the appended entries follow the (truncated) log without a gap and
        their terms never go down; the truncation spares the snapshot; the
        term never goes down and a vote once cast in a term never changes.

        @return: a Deferred firing with None once all of it is durable.
        """
        # Even an empty save goes through the writer queue: it must not fire
        # before an earlier save it is ordered after.
        return self._store.write(_save, hard_state, tuple(append), truncate_from)

    def compact(self, up_to_index):
        """
        Drop the entries up to C{up_to_index}, which the snapshot now
        covers, keeping that index and its term as the snapshot's. Asking
        for an index already compacted does nothing.

        @raise ValueError: (in the Deferred) if C{up_to_index} is past the
            last entry.
        @return: a Deferred firing with None once durable.
        """
        return self._store.write(_compact, up_to_index)

    def install_snapshot(self, index, term, apply):
        """
        Replace the node's data with a received snapshot, in one
        transaction: C{apply(connection)} writes the data, every log entry
        is dropped and the snapshot index and term become C{index} and
        C{term}. If C{apply} raises, nothing changes. A snapshot older than
        the one installed is refused with ValueError.

        @return: a Deferred firing with None once durable.
        """
        return self._store.write(_install_snapshot, index, term, apply)

    def entries(self, low, high):
        """
        The entries with C{low <= index < high}, as a leader sends them to a
        follower. Entries past the end of the log are left out (so the list
        may be short, or empty); a range starting at or before the snapshot
        index fails with L{LogCompacted}, since those entries only exist in
        the snapshot. Checksums are verified: a bad record fails with
        L{LogCorrupted} rather than being sent.

        @return: a Deferred firing with a list of L{Entry}.
        """
        return self._store.read(_entries, low, high)

    def term_at(self, index):
        """
        @return: a Deferred firing with the term of the entry at C{index}:
            the snapshot term at the snapshot index, None for an index
            compacted before it or past the end of the log.
        """
        return self._store.read(_term_at, index)


# What follows runs on the store's threads, inside the store's transaction.


def _read_state(connection):
    """
    @return: the raft_state rows as C{{key: value}}, checksums verified.
    """
    values = {}
    for key, value, checksum in connection.execute(_SELECT_STATE):
        if checksum != state_checksum(key, value):
            raise LogCorrupted(f"the Raft state row {key!r} fails its checksum")
        values[key] = value
    return values


def _number(values, key):
    value = values.get(key)
    if value is None:
        return 0
    if len(value) != _NUMBER.size:
        raise LogCorrupted(f"the Raft state row {key!r} is not a number")
    return _NUMBER.unpack(value)[0]


def _hard_state(values):
    vote = values.get(VOTE)
    return HardState(_number(values, TERM), None if vote is None else vote.decode("utf-8"))


def _snapshot(values):
    return _number(values, SNAPSHOT_INDEX), _number(values, SNAPSHOT_TERM)


def _put_state(connection, key, value):
    # Delete then insert: an upsert both SQLite and PostgreSQL accept.
    connection.execute(delete(raft_state).where(raft_state.c.key == key))
    connection.execute(
        insert(raft_state).values(key=key, value=value, checksum=state_checksum(key, value))
    )


def _put_number(connection, key, number):
    _put_state(connection, key, _NUMBER.pack(number))


def _entry_term(connection, index):
    return connection.execute(_SELECT_TERM, {"index": index}).scalar()


def _last_entry(connection, snapshot):
    """
    @return: C{(index, term)} of the last entry, the snapshot's if none.
    """
    row = connection.execute(_SELECT_LAST).first()
    return tuple(row) if row is not None else snapshot


def _load(connection):
    values = _read_state(connection)
    hard_state = _hard_state(values)
    snapshot_index, snapshot_term = _snapshot(values)
    rows = connection.execute(_SELECT_ALL).all()
    intact = [
        checksum == entry_checksum(index, term, data) for index, term, data, checksum in rows
    ]
    # Everything up to the last intact record must be intact; what follows
    # it is the torn tail.
    good = max((position + 1 for position, ok in enumerate(intact) if ok), default=0)
    if not all(intact[:good]):
        bad = intact.index(False)
        raise LogCorrupted(
            f"Raft log record {rows[bad][0]} fails its checksum but record "
            f"{rows[good - 1][0]} after it is intact: the log is damaged, not torn; "
            f"restore this node from another node's snapshot"
        )
    entries = [Entry(term, index, bytes(data)) for index, term, data, _ in rows[:good]]
    _check_sequence(entries, snapshot_index, snapshot_term)
    torn = rows[good:]
    if torn:
        last_good = entries[-1].index if entries else snapshot_index
        connection.execute(delete(raft_log).where(raft_log.c.index > last_good))
    loaded = LoadedLog(hard_state, snapshot_index, snapshot_term, entries)
    return loaded, len(torn), torn[0][0] if torn else None


def _check_sequence(entries, snapshot_index, snapshot_term):
    fault = _sequence_fault(entries, snapshot_index, snapshot_term)
    if fault is not None:
        entry, previous_index, previous_term = fault
        if entry.index != previous_index + 1:
            raise LogCorrupted(f"Raft log record {entry.index} follows record "
                               f"{previous_index}: entries are missing")
        raise LogCorrupted(f"Raft log record {entry.index} has term {entry.term}, below the "
                           f"term {previous_term} before it")


def _sequence_fault(entries, previous_index, previous_term):
    # Entries must follow one another, with terms that never go down: the
    # first entry that does not, and the index and term before it.
    for entry in entries:
        if entry.index != previous_index + 1 or entry.term < previous_term:
            return entry, previous_index, previous_term
        previous_index, previous_term = entry.index, entry.term
    return None


def _save(connection, hard_state, append, truncate_from):
    values = _read_state(connection)
    snapshot = _snapshot(values)
    last_index, last_term = _last_entry(connection, snapshot)
    # Every check comes before the first write, so a refused save leaves no
    # trace even outside the store's rollback.
    if truncate_from is not None:
        if truncate_from <= snapshot[0]:
            raise ValueError(
                f"cannot truncate from {truncate_from}: entries up to {snapshot[0]} "
                f"are in the snapshot"
            )
        if truncate_from <= last_index:
            last_index = truncate_from - 1
            last_term = (
                snapshot[1] if last_index == snapshot[0] else _entry_term(connection, last_index)
            )
    _check_append(append, last_index, last_term)
    if hard_state is not None:
        _check_hard_state(hard_state, _hard_state(values))
    if truncate_from is not None:
        connection.execute(delete(raft_log).where(raft_log.c.index >= truncate_from))
    if append:
        connection.execute(
            insert(raft_log),
            [
                {
                    "index": entry.index,
                    "term": entry.term,
                    "data": entry.data,
                    "checksum": entry_checksum(entry.index, entry.term, entry.data),
                }
                for entry in append
            ],
        )
    if hard_state is not None:
        _put_number(connection, TERM, hard_state.term)
        vote = hard_state.vote
        _put_state(connection, VOTE, None if vote is None else vote.encode("utf-8"))


def _check_append(append, last_index, last_term):
    fault = _sequence_fault(append, last_index, last_term)
    if fault is not None:
        entry, previous_index, previous_term = fault
        if entry.index != previous_index + 1:
            raise ValueError(
                f"entry {entry.index} does not follow the log, which ends at {previous_index}"
            )
        raise ValueError(f"entry {entry.index} has term {entry.term}, below the term "
                         f"{previous_term} before it")


def _check_hard_state(new, old):
    # Raft's safety rests on both: a term never goes back, and a node votes
    # at most once per term.
    if new.term < old.term:
        raise ValueError(f"term {new.term} is below the stored term {old.term}")
    if new.term == old.term and old.vote is not None and new.vote != old.vote:
        raise ValueError(f"already voted for {old.vote!r} in term {old.term}")


def _compact(connection, up_to_index):
    snapshot_index, _ = _snapshot(_read_state(connection))
    if up_to_index <= snapshot_index:
        return
    term = _entry_term(connection, up_to_index)
    if term is None:
        raise ValueError(f"cannot compact up to {up_to_index}: there is no such entry")
    connection.execute(delete(raft_log).where(raft_log.c.index <= up_to_index))
    _put_number(connection, SNAPSHOT_INDEX, up_to_index)
    _put_number(connection, SNAPSHOT_TERM, term)


def _install_snapshot(connection, index, term, apply):
    snapshot_index, _ = _snapshot(_read_state(connection))
    if index < snapshot_index:
        raise ValueError(
            f"snapshot at {index} is older than the installed one at {snapshot_index}"
        )
    apply(connection)
    connection.execute(delete(raft_log))
    _put_number(connection, SNAPSHOT_INDEX, index)
    _put_number(connection, SNAPSHOT_TERM, term)


def _entries(connection, low, high):
    snapshot_index, _ = _snapshot(_read_state(connection))
    if low <= snapshot_index:
        raise LogCompacted(
            f"entries from {low} are compacted into the snapshot at {snapshot_index}"
        )
    entries = []
    for index, term, data, checksum in connection.execute(
        _SELECT_RANGE, {"low": low, "high": high}
    ):
        expected = low + len(entries)
        if index != expected or checksum != entry_checksum(index, term, data):
            raise LogCorrupted(f"Raft log record {expected} is missing or fails its checksum")
        entries.append(Entry(term, index, bytes(data)))
    return entries


def _term_at(connection, index):
    snapshot_index, snapshot_term = _snapshot(_read_state(connection))
    if index == snapshot_index:
        return snapshot_term
    if index < snapshot_index:
        return None
    # The whole record, so that a damaged term is caught, not answered.
    row = connection.execute(_SELECT_ONE, {"index": index}).first()
    if row is None:
        return None
    _, term, data, checksum = row
    if checksum != entry_checksum(index, term, data):
        raise LogCorrupted(f"Raft log record {index} fails its checksum")
    return term


_ENTRY_COLUMNS = (raft_log.c.index, raft_log.c.term, raft_log.c.data, raft_log.c.checksum)
_SELECT_STATE = select(raft_state.c.key, raft_state.c.value, raft_state.c.checksum)
_SELECT_ALL = select(*_ENTRY_COLUMNS).order_by(raft_log.c.index)
_SELECT_LAST = select(raft_log.c.index, raft_log.c.term).order_by(raft_log.c.index.desc()).limit(1)
_SELECT_TERM = select(raft_log.c.term).where(raft_log.c.index == bindparam("index"))
_SELECT_ONE = select(*_ENTRY_COLUMNS).where(raft_log.c.index == bindparam("index"))
_SELECT_RANGE = (
    select(*_ENTRY_COLUMNS)
    .where(raft_log.c.index >= bindparam("low"), raft_log.c.index < bindparam("high"))
    .order_by(raft_log.c.index)
)
