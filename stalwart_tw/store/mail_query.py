"""
Email/query in SQL: the clauses its filter conditions compile to, the
expressions it sorts by, and the query that runs them on a reader thread.

Every condition is an indexed lookup: membership through
C{email_mailboxes_by_date}, keywords through C{email_keywords_by_keyword},
thread conditions through C{emails_by_thread}, header conditions through
C{email_headers_by_name}, text through the full-text index (store/fts.py).
Sorts on from, to and subject read columns that hold the
i;unicode-casemap key already, so the default collation sorts by plain
comparison; another collation is applied in SQL.

collapseThreads keeps, per thread, the first message in the sort order:
a window function (ROW_NUMBER over the thread), so the database does the
winnowing, not Python.
"""

from sqlalchemy import BigInteger, Text, and_, case, distinct, exists, func, literal, select, true, tuple_

from stalwart_tw.store import fts, schema
from stalwart_tw.store.changes import type_modseq
from stalwart_tw.store.collation import SQL_NAMES, unicode_casemap
from stalwart_tw.store.mail_sql import EMAIL

_e = schema.emails
_members = schema.email_mailboxes
_keywords = schema.email_keywords
_headers = schema.email_headers

SORT_COLUMNS = {
    "receivedAt": _e.c.received_at,
    "sentAt": _e.c.sent_at,
    "size": _e.c.size,
    "from": _e.c.from_sort,
    "to": _e.c.to_sort,
    "subject": _e.c.subject_sort,
}
# Columns whose values are stored as their i;unicode-casemap key.
_FOLDED = frozenset({"from", "to", "subject"})


def in_mailbox(account, mailbox):
    return exists().where(
        (_members.c.account_id == account)
        & (_members.c.mailbox_id == mailbox)
        & (_members.c.email_id == _e.c.id)
    )


def in_mailbox_other_than(account, mailboxes):
    return exists().where(
        (_members.c.account_id == account)
        & (_members.c.email_id == _e.c.id)
        & _members.c.mailbox_id.not_in(sorted(mailboxes))
    )


def received_before(seconds):
    return _e.c.received_at < seconds


def received_after(seconds):
    return _e.c.received_at >= seconds


def size_at_least(size):
    return _e.c.size >= size


def size_below(size):
    return _e.c.size < size


def has_attachment(flag):
    return _e.c.has_attachment.is_(True) if flag else _e.c.has_attachment.is_(False)


def _has(account, keyword, email_column):
    return exists().where(
        (_keywords.c.account_id == account)
        & (_keywords.c.keyword == keyword)
        & (_keywords.c.email_id == email_column)
    )


def has_keyword(account, keyword):
    return _has(account, keyword, _e.c.id)


def thread_keyword(account, keyword, mode):
    """
    @param mode: C{"all"}, C{"some"} or C{"none"} of the messages of the
        message's thread have the keyword.
    """
    other = _e.alias("other")
    same_thread = (other.c.account_id == account) & (other.c.thread_id == _e.c.thread_id)
    if mode == "all":
        return ~exists().where(same_thread & ~_has(account, keyword, other.c.id))
    found = exists().where(same_thread & _has(account, keyword, other.c.id))
    return found if mode == "some" else ~found


def header_present(account, name):
    return exists().where(
        (_headers.c.account_id == account)
        & (_headers.c.name == name)
        & (_headers.c.email_id == _e.c.id)
    )


def header_contains(account, name, folded):
    return exists().where(
        (_headers.c.account_id == account)
        & (_headers.c.name == name)
        & (_headers.c.email_id == _e.c.id)
        & (func.instr(_headers.c.value, folded) > 0)
    )


def text_matches(account, field, text, languages):
    """
    @param field: C{subject}, C{from}, C{to}, C{cc}, C{bcc}, C{body}, or
        C{None} for everything (the C{text} condition).
    @return: the SELECT of the numbers of the messages that match.
    """
    return fts.match(account, field, text, languages)


def text_match(account, field, text, languages):
    return _e.c.id.in_(text_matches(account, field, text, languages))


def keyword_sort(account, keyword, mode=None):
    """
    @return: the sort expression of a keyword comparator: true (1) when
        the message (or all, or some, of its thread) has the keyword.
    """
    clause = has_keyword(account, keyword) if mode is None else thread_keyword(account, keyword, mode)
    return case((clause, 1), else_=0)


def sort_expression(name):
    """
    @return: the column of a plain sort property, and whether it holds
        folded keys.
    """
    return SORT_COLUMNS[name], name in _FOLDED


def _order(comparators):
    # (expression, ascending) pairs: nulls first when ascending (only for
    # a column that may hold them), then the value, for each comparator;
    # ties by message number in the direction of the last comparator, so
    # that a sort by one indexed column reads its index in order.
    order = []
    for expression, folded, ascending, collate in comparators:
        nullable = getattr(expression, "nullable", True)
        # Collations apply to text; a text column holding folded keys is
        # already in i;unicode-casemap order.
        text = isinstance(getattr(expression, "type", None), Text)
        if text and collate is not None and not (folded and collate is unicode_casemap):
            expression = expression.collate(SQL_NAMES[collate])
        if nullable:
            order.append((expression.is_not(None) if ascending else expression.is_(None), True))
        order.append((expression, ascending))
    last = comparators[-1][2] if comparators else True
    return order + [(_e.c.id, last)]


def _by(pairs):
    return [expression if ascending else expression.desc() for expression, ascending in pairs]


def _condition(account, where, matches=None):
    if matches is None:
        return and_(_e.c.account_id == account, where)
    # The messages named by a full-text match, looked up by key: with the
    # account inside the key the planner has no account range of a sort
    # index to walk instead.
    found = matches.subquery()
    keys = select(literal(account, BigInteger), found.c.email_id)
    return and_(tuple_(_e.c.account_id, _e.c.id).in_(keys), where)


def _statement(condition, comparators, collapse):
    order = _order(comparators)
    if not collapse:
        return select(_e.c.id).where(condition).order_by(*_by(order))
    place = func.row_number().over(partition_by=_e.c.thread_id, order_by=_by(order))
    ranked = select(
        _e.c.id.label("number"), place.label("place"),
        *[expression.label(f"k{index}") for index, (expression, _) in enumerate(order)],
    ).where(condition).subquery()
    keys = [(ranked.c[f"k{index}"], up) for index, (_, up) in enumerate(order)]
    return select(ranked.c.number).where(ranked.c.place == 1).order_by(*_by(keys))


def query(connection, account, where, comparators, collapse):
    """
    @param where: the filter's clause over C{emails}.
    @param comparators: C{(expression, folded, ascending, collation key
        or None)}, most significant first.
    @param collapse: keep only the first message of each thread.
    @return: C{(Email modseq, message numbers in order)}.
    """
    statement = _statement(_condition(account, where), comparators, collapse)
    numbers = list(connection.execute(statement).scalars())
    return type_modseq(connection, account, EMAIL), numbers


def query_window(connection, account, where, comparators, collapse, position, limit,
                 only_mailbox=None, matches=None):
    """
    As L{query}, for the window of C{limit} results from C{position}
    (from the end when negative): the database counts and cuts, so a
    page of a large mailbox reads only that page.

    @param only_mailbox: the mailbox number when the filter is that one
        inMailbox condition alone: then the total is the mailbox's count,
        read from its index.
    @param matches: a full-text match (L{fts.match}) that every result
        meets, or C{None}. When all the results fit in the window, they
        are read from the match rather than by walking the sort order past
        every message that does not match: a rare word costs its matches,
        not the mailbox.
    @return: C{(Email modseq, start, message numbers, total)}.
    """
    condition = _condition(account, where)
    if only_mailbox is not None and not collapse:
        total = connection.execute(select(func.count()).where(
            (_members.c.account_id == account) & (_members.c.mailbox_id == only_mailbox)
        )).scalar_one()
    else:
        counted = func.count(distinct(_e.c.thread_id)) if collapse else func.count()
        total = connection.execute(select(counted).where(condition)).scalar_one()
    start = max(0, total + position) if position < 0 else position
    if start >= total:
        numbers = []
    else:
        if matches is not None and total <= start + limit:
            condition = _condition(account, where, matches)
        statement = _statement(condition, comparators, collapse)
        numbers = list(connection.execute(statement.limit(limit).offset(start)).scalars())
    return type_modseq(connection, account, EMAIL), start, numbers, total


def everything():
    return true()
