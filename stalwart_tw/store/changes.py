"""
Modseqs, state strings and the change log, as /changes reads them.

Every batch that changes an account advances its modseq by one and logs each
object it touched at the new modseq. The JMAP state of a type in an account
is the modseq of the last change to that type, written as a string; a client
that holds an older state asks for the changes logged after it.

One batch is one method call, so one modseq may change hundreds of objects
(a Principal/set, an Email/import). A client whose C{maxChanges} is smaller
still pages through them: /changes then stops inside the modseq, at an
intermediate state C{"m.k"} (hex) that means "everything up to modseq m,
and the first k objects changed at modseq m+1", in the order the log
recorded them. Only /changes issues and reads such states.

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
    More objects changed than the caller will take.
    """


@dataclass(frozen=True)
class ChangePoint:
    """
    A point in an account's change log: every change up to C{modseq}, and
    the first C{skip} objects changed at the modseq after it.
    """

    modseq: int
    skip: int = 0


def encode_state(modseq, skip=0):
    """
    @return: the state string of a modseq (and of the objects of the next
        one already seen, for an intermediate state of /changes).
    """
    if skip:
        return f"{modseq:x}.{skip:x}"
    return format(modseq, "x")


def decode_point(state):
    """
    @return: the L{ChangePoint} of a state string, intermediate or not.
    @raise InvalidState: not a state string of ours.
    """
    if not isinstance(state, str) or "." not in state:
        return ChangePoint(decode_state(state))
    modseq, _, skip = state.partition(".")
    point = ChangePoint(decode_state(modseq), decode_state(skip))
    if point.skip < 1:
        raise InvalidState(f"not a state: {state!r}")
    return point


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
    @ivar new_skip: the objects of the modseq after C{new_modseq} already
        listed, when the changes stop inside it (see L{ChangePoint}).
    """

    created: list
    updated: list
    destroyed: list
    new_modseq: int
    has_more: bool
    new_skip: int = 0


def changes_since(connection, account_id, type_name, since, max_changes):
    """
    Collect the objects of a type created, updated and destroyed after
    C{since}, each listed once, at most C{max_changes} of them.

    A page ends at a modseq boundary when it can: when the limit falls
    inside a later modseq, the result stops at the modseq before it and
    says C{has_more}. Only when the first modseq alone holds more objects
    than the limit does the page end inside it, at an intermediate point
    (C{new_skip}). An object created and destroyed within the range is
    left out.

    @param since: a modseq, or a L{ChangePoint}.
    @raise ChangesUnavailable: the log no longer reaches back to C{since},
        or C{since} is in the future.
    """
    point = since if isinstance(since, ChangePoint) else ChangePoint(since)
    floor, current = _floor_and_modseq(connection, account_id)
    if point.modseq < floor or point.modseq > current:
        raise ChangesUnavailable(f"cannot calculate changes since modseq {point.modseq}")
    log = schema.changelog
    rows = connection.execute(
        select(log.c.modseq, log.c.object_id, log.c.kind)
        .where(
            (log.c.account_id == account_id)
            & (log.c.type_name == type_name)
            & (log.c.modseq > point.modseq)
        )
        .order_by(log.c.modseq, log.c.seq)
    ).all()
    first_kind, last_kind, order = {}, {}, []
    reached = point.modseq
    for modseq, group in groupby(rows, key=lambda row: row[0]):
        group = list(group)
        objects = list(dict.fromkeys(object_id for _, object_id, _ in group))
        skip = 0
        if reached == point.modseq and point.skip:
            if modseq != point.modseq + 1 or point.skip >= len(objects):
                raise ChangesUnavailable(f"no such point in the changes of modseq {modseq}")
            skip = point.skip
        taken = objects[skip:]
        unseen = [object_id for object_id in taken if object_id not in first_kind]
        if len(order) + len(unseen) > max_changes:
            if order:
                return _summarise(order, first_kind, last_kind, reached, True)
            # The first modseq alone is more than a page: end inside it.
            taken = taken[:max_changes]
            _collect(group, set(taken), first_kind, last_kind, order)
            return _summarise(
                order, first_kind, last_kind, modseq - 1, True, skip + len(taken)
            )
        _collect(group, set(taken), first_kind, last_kind, order)
        reached = modseq
    newest = max(reached, type_modseq(connection, account_id, type_name))
    return _summarise(order, first_kind, last_kind, newest, False)


def _collect(group, objects, first_kind, last_kind, order):
    for _, object_id, kind in group:
        if object_id not in objects:
            continue
        if object_id not in first_kind:
            first_kind[object_id] = kind
            order.append(object_id)
        last_kind[object_id] = kind


def _summarise(order, first_kind, last_kind, new_modseq, has_more, new_skip=0):
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
    return Changes(created, updated, destroyed, new_modseq, has_more, new_skip)


def _floor_and_modseq(connection, account_id):
    table = schema.account_state
    row = connection.execute(
        select(table.c.changelog_floor, table.c.modseq).where(table.c.account_id == account_id)
    ).first()
    return (row[0], row[1]) if row else (0, 0)


__all__ = [
    "ChangePoint",
    "Changes",
    "ChangesUnavailable",
    "InvalidState",
    "TooManyChanges",
    "UPDATED",
    "account_modseq",
    "changes_since",
    "decode_point",
    "decode_state",
    "encode_state",
    "type_modseq",
]
