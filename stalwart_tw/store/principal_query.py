"""
Principal/query in SQL: the clauses its filter conditions compile to, the
columns it sorts by, and the query that runs them on a reader thread, so
that no principal is read into memory, filtered or sorted on the reactor.

Text conditions match a case-folded substring (C{jmap_casefold}, as
Python's C{str.casefold}); sorts use the JMAP collations registered on
every connection (L{stalwart_tw.store.collation}), nulls first when
ascending, ties in principal id order.
"""

from sqlalchemy import and_, exists, false, func, not_, or_, select, true

from stalwart_tw.store import schema
from stalwart_tw.store.changes import type_modseq
from stalwart_tw.store.collation import SQL_NAMES
from stalwart_tw.store.principal_changes import CHANGE_TYPE, GROUP, INDIVIDUAL
from stalwart_tw.store.schema import DIRECTORY_ACCOUNT

_p = schema.principals
_e = schema.principal_emails

# The kinds of principal that own an account.
ACCOUNT_KINDS = (INDIVIDUAL, GROUP)

PRIMARY_EMAIL = (
    select(_e.c.address)
    .where((_e.c.principal_id == _p.c.id) & _e.c.is_alias.is_(False))
    .scalar_subquery()
)
NAME = _p.c.name
KIND = _p.c.kind
DESCRIPTION = _p.c.description


class SqlClauses:
    """
    How conditions join into one SQL clause (the joiner compile_filter
    takes).
    """

    @staticmethod
    def everything():
        return true()

    @staticmethod
    def all(parts):
        return and_(true(), *parts)

    @staticmethod
    def any(parts):
        return or_(false(), *parts)

    @staticmethod
    def none(parts):
        return not_(or_(false(), *parts))


def _contains(column, folded):
    return func.instr(func.jmap_casefold(column), folded) > 0


def text_contains(folded, *columns):
    """
    @param folded: the case-folded text looked for.
    @return: the clause: any of C{columns} holds it.
    """
    return or_(false(), *(_contains(column, folded) for column in columns))


def address_contains(folded):
    """
    @return: the clause: the principal's primary address or an alias holds
        C{folded}.
    """
    return exists(
        select(_e.c.address).where((_e.c.principal_id == _p.c.id) & _contains(_e.c.address, folded))
    )


def owns_account(numbers):
    """
    @return: the clause: the principal owns one of the accounts C{numbers}.
    """
    return _p.c.id.in_(sorted(numbers)) & _p.c.kind.in_(ACCOUNT_KINDS)


def equals(column, value):
    """
    @return: the clause C{column = value}.
    """
    return column == value


def query(connection, visible, where, comparators):
    """
    @param visible: the principal ids the caller may see, or C{None}: all.
    @param where: the filter's clause.
    @param comparators: C{(column, ascending, collation key function)},
        most significant first.
    @return: C{(modseq, principal ids in order)}.
    """
    statement = select(_p.c.id).where(where)
    if visible is not None:
        statement = statement.where(_p.c.id.in_(sorted(visible)))
    order = []
    for column, ascending, collate in comparators:
        collated = column.collate(SQL_NAMES[collate])
        if ascending:
            order += [column.is_not(None), collated]
        else:
            order += [column.is_(None), collated.desc()]
    statement = statement.order_by(*order, _p.c.id)
    ids = list(connection.execute(statement).scalars())
    return type_modseq(connection, DIRECTORY_ACCOUNT, CHANGE_TYPE), ids
