"""
Modseqs, state strings and the change log, as /changes reads them.

Every batch that changes an account advances its modseq by one and logs each
object it touched at the new modseq. The JMAP state of a type in an account
is the modseq of the last change to that type, written as a string; a client
that holds an older state asks for the changes logged after it.

Reading functions take a connection and run on the store's reader threads.
"""

from dataclasses import dataclass
from itertools import groupby

from sqlalchemy import select

from stalwart_tw.store import schema
from stalwart_tw.store.batch import CREATED, DESTROYED, UPDATED


class InvalidState(ValueError):
    """
    A state string that this server never issued.
    """


class ChangesUnavailable(Exception):
    """
    The changes since that state were trimmed from the log, or the state
    is newer than any this server issued.
    """


class TooManyChanges(Exception):
    """
    One single modseq changed more objects than the caller will take.
    """


def encode_state(modseq):
    """
    @return: the state string of a modseq.
    """
    return format(modseq, "x")


def decode_state(state):
    """
    @return: the modseq of a state string.
    @raise InvalidState: not a state string of ours.
    """
    if not isinstance(state, str) or not 0 < len(state) <= 16:
        raise InvalidState(f"not a state: {state!r}")
    try:
        modseq = int(state, 16)
    except ValueError:
        raise InvalidState(f"not a state: {state!r}") from None
    if modseq < 0 or encode_state(modseq) != state:
        raise InvalidState(f"not a state: {state!r}")
    return modseq


def account_modseq(connection, account_id):
    """
    @return: the current modseq of an account, 0 before its first change.
    """
    table = schema.account_state
    value = connection.execute(
        select(table.c.modseq).where(table.c.account_id == account_id)
    ).scalar()
    return value or 0


def type_modseq(connection, account_id, type_name):
    """
    @return: the modseq of the last change to a type in an account.
    """
    table = schema.type_state
    value = connection.execute(
        select(table.c.modseq).where(
            (table.c.account_id == account_id) & (table.c.type_name == type_name)
        )
    ).scalar()
    return value or 0


@dataclass
class Changes:
    """
    What changed for one type in an account after some modseq.

    @ivar new_modseq: the modseq the client is at once it has applied these.
    @ivar has_more: more changes follow after C{new_modseq}.
    """

    created: list
    updated: list
    destroyed: list
    new_modseq: int
    has_more: bool


def changes_since(connection, account_id, type_name, since_modseq, max_changes):
    """
    Collect the objects of a type created, updated and destroyed after
    C{since_modseq}, each listed once, at most C{max_changes} of them.

    A batch of changes is never split: when the limit falls inside one
    modseq, the result stops at the modseq before it and says C{has_more}.
    An object created and destroyed within the range is left out.

    @raise ChangesUnavailable: the log no longer reaches back to
        C{since_modseq}, or C{since_modseq} is in the future.
    @raise TooManyChanges: the first modseq alone changed more than
        C{max_changes} objects.
    """
    floor, current = _floor_and_modseq(connection, account_id)
    if since_modseq < floor or since_modseq > current:
        raise ChangesUnavailable(f"cannot calculate changes since modseq {since_modseq}")
    log = schema.changelog
    rows = connection.execute(
        select(log.c.modseq, log.c.object_id, log.c.kind)
        .where(
            (log.c.account_id == account_id)
            & (log.c.type_name == type_name)
            & (log.c.modseq > since_modseq)
        )
        .order_by(log.c.modseq, log.c.seq)
    ).all()
    first_kind, last_kind, order = {}, {}, []
    reached = since_modseq
    for modseq, group in groupby(rows, key=lambda row: row[0]):
        group = list(group)
        unseen = {object_id for _, object_id, _ in group} - first_kind.keys()
        if len(order) + len(unseen) > max_changes:
            if reached == since_modseq:
                raise TooManyChanges(f"modseq {modseq} alone changed more than {max_changes}")
            return _summarise(order, first_kind, last_kind, reached, True)
        for _, object_id, kind in group:
            if object_id not in first_kind:
                first_kind[object_id] = kind
                order.append(object_id)
            last_kind[object_id] = kind
        reached = modseq
    newest = max(reached, type_modseq(connection, account_id, type_name))
    return _summarise(order, first_kind, last_kind, newest, False)


def _summarise(order, first_kind, last_kind, new_modseq, has_more):
    created, updated, destroyed = [], [], []
    for object_id in order:
        first, last = first_kind[object_id], last_kind[object_id]
        if first == CREATED:
            if last != DESTROYED:
                created.append(object_id)
        elif last == DESTROYED:
            destroyed.append(object_id)
        else:
            updated.append(object_id)
    return Changes(created, updated, destroyed, new_modseq, has_more)


def _floor_and_modseq(connection, account_id):
    table = schema.account_state
    row = connection.execute(
        select(table.c.changelog_floor, table.c.modseq).where(table.c.account_id == account_id)
    ).first()
    return (row[0], row[1]) if row else (0, 0)


__all__ = [
    "Changes",
    "ChangesUnavailable",
    "InvalidState",
    "TooManyChanges",
    "UPDATED",
    "account_modseq",
    "changes_since",
    "decode_state",
    "encode_state",
    "type_modseq",
]
