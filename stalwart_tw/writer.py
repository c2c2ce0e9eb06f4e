"""
The one write loop of the server, for JMAP methods, the directory, the blob
store and the admin shell alike (ARCHITECTURE section 2).

A write to an account runs under that account's lock on the node: it reads
a consistent snapshot (one read transaction on the reader pool), lets its
builder fill one L{WriteBatch} that expects the account's modseq as read,
and hands the batch to C{node.commit}. A batch built on state that moved
meanwhile (another node's leader term, later) is skipped whole when it is
applied; the loop then rebuilds it once from fresh state, and a second
conflict fails the write. Builders decide everything a follower replays
(ids, dates, hashes), so a rebuild may decide differently, never half.

Nothing in C{store/} calls the node: the store's writers are handed an
L{AccountWriter} and commit through it.
"""

from dataclasses import dataclass

from twisted.internet.defer import inlineCallbacks

from stalwart_tw.logs import Logger
from stalwart_tw.store.batch import ApplyResult, WriteBatch
from stalwart_tw.store.changes import account_modseq
from stalwart_tw.store.errors import BatchConflict


@dataclass(frozen=True)
class Written:
    """
    The end of a write.

    @ivar outcome: what the builder returned.
    @ivar result: the L{ApplyResult} of the committed batch, or C{None}
        when the builder changed nothing (no batch was committed).
    """

    outcome: object
    result: ApplyResult = None

    def type_modseq(self, account, type_name, default):
        """
        @return: the modseq of a type in an account after the write, or
            C{default} when the write did not change that type.
        """
        if self.result is None:
            return default
        return self.result.type_states.get(account, {}).get(type_name, default)


def _build(connection, account, build, args):
    batch = WriteBatch()
    batch.expect_modseq(account, account_modseq(connection, account))
    outcome = build(connection, batch, *args)
    # A change logged in an account the batch did not read would be made
    # on state nobody checked: a builder's bug, refused before it commits.
    unread = sorted({change[0] for change in batch.changes} - set(batch.expected_modseqs))
    if unread:
        raise ValueError(f"a write to account {account} changes accounts it did not read: {unread}")
    return batch, outcome


class AccountWriter:
    """
    Serialise on the account, read, build one batch, expect the modseq
    read, commit, rebuild once on a conflict.

    @param store: the L{Store} whose reader pool builders run on.
    @param node: the node batches are committed through.
    """

    log = Logger()

    def __init__(self, store, node):
        self._store = store
        self._node = node

    def write(self, account, build, *args):
        """
        Run C{build(connection, batch, *args)} on a reader thread, inside
        one read transaction, with a fresh batch that expects C{account}'s
        modseq as of that transaction; commit the batch it fills.

        The builder raises to refuse the write (nothing is committed), and
        leaves the batch empty to change nothing.

        @return: a Deferred firing with a L{Written}, or failing with what
            the builder raised, L{BatchConflict} after a second conflict,
            or C{NodeStopping} once the node is shutting down.
        """
        return self._node.serialised(account, self._write_locked, account, build, args)

    @inlineCallbacks
    def _write_locked(self, account, build, args):
        for attempt in (1, 2):
            batch, outcome = yield self._store.read(_build, account, build, args)
            if not batch:
                return Written(outcome)
            try:
                result = yield self._node.commit(batch)
            except BatchConflict:
                if attempt == 2:
                    raise
                self.log.info(
                    "write to account {account} built on stale state; rebuilding it",
                    account=account,
                )
                continue
            return Written(outcome, result)

    def commit(self, batch):
        """
        Commit a batch that depends on no state it read: rows keyed by
        exactly the values they replace or delete (an upload's expiry, the
        purge of expired uploads), so it can neither conflict nor need a
        rebuild, and needs no account's lock.

        @return: a Deferred firing with the L{ApplyResult}.
        """
        return self._node.commit(batch)

    def add_listener(self, listener):
        """
        Call C{listener(apply_result)} after every batch this node applies,
        whoever wrote it (this node's writers, or other nodes through the
        log).
        """
        self._node.add_listener(listener)
