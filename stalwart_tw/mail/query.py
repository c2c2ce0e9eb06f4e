"""
Email/query and Email/queryChanges (RFC 8621 section 4.4): every filter
condition and sort of the RFC, compiled to one SQL query
(L{stalwart_tw.store.mail_query}) that the store runs on a reader thread.

Choices: a mailbox id that names no mailbox matches nothing (it is no
error: the mailbox may have just been destroyed); text conditions match
whole words, stemmed (store/fts.py), all words of the condition required,
quoted phrases in order; the C{header} condition matches a case-folded
substring of the header's decoded value.

/queryChanges is exact with collapseThreads and with thread-keyword
filters and sorts: a change to one message can move the place of others
of its thread (a newer message displaces the one that stood for the
thread), so every message of a thread touched since the client's state is
reported removed, and added back where it now stands.
"""

import re
from datetime import datetime, timezone

from sqlalchemy import and_, false, not_, or_, true

from stalwart_tw.jmap.query import (
    FilterValueError,
    QueryEngine,
    QuerySpec,
    SortWith,
    compile_filter,
    compile_sort,
    filter_string,
)
from stalwart_tw.mail.keywords import KeywordError, check_keyword
from stalwart_tw.mail.messages import MAILBOX_PREFIX, email_id, email_number, thread_number
from stalwart_tw.jmap.ids import decode_id
from stalwart_tw.store import mail_query as sql
from stalwart_tw.store.changes import changes_since
from stalwart_tw.store.mail_sql import THREAD, email_rows, thread_emails

# Filter conditions whose result for a message depends on the other
# messages of its thread.
THREAD_CONDITIONS = frozenset(
    {"allInThreadHaveKeyword", "someInThreadHaveKeyword", "noneInThreadHaveKeyword"}
)


# RFC 3339 date-time in UTC (RFC 8620 section 1.4), fractions allowed.
_UTC_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")


def parse_utc_date(value):
    """
    @return: the seconds since the epoch of a UTCDate (RFC 8620 section 1.4).
    @raise ValueError: for anything else.
    """
    if not isinstance(value, str) or not _UTC_DATE.fullmatch(value):
        raise ValueError(f"must be a UTCDate such as 2024-01-31T12:00:00Z, not {value!r}")
    try:
        moment = datetime.fromisoformat(value[:19] + "+00:00")
    except ValueError:
        raise ValueError(f"must be a UTCDate such as 2024-01-31T12:00:00Z, not {value!r}") from None
    return int(moment.timestamp())


def utc_date(seconds):
    """
    @return: the UTCDate of a number of seconds since the epoch.
    """
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z")


class _Clauses:
    """
    compile_filter's joiner: each part is C{clause(account)}.
    """

    @staticmethod
    def everything():
        return lambda account: sql.everything()

    @staticmethod
    def all(parts):
        return lambda account: and_(true(), *(part(account) for part in parts))

    @staticmethod
    def any(parts):
        return lambda account: or_(false(), *(part(account) for part in parts))

    @staticmethod
    def none(parts):
        return lambda account: not_(or_(false(), *(part(account) for part in parts)))


def _mailbox(value):
    number = decode_id(MAILBOX_PREFIX, filter_string(value))
    if number is None:
        return lambda account: false()
    return lambda account: sql.in_mailbox(account, number)


def _mailboxes_other_than(value):
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FilterValueError(f"must be an array of mailbox ids, not {value!r}")
    numbers = {decode_id(MAILBOX_PREFIX, item) for item in value} - {None}
    return lambda account: sql.in_mailbox_other_than(account, numbers)


def _date(build):
    def compile_date(value):
        try:
            seconds = parse_utc_date(value)
        except ValueError as error:
            raise FilterValueError(str(error)) from None
        return lambda account: build(seconds)
    return compile_date


def _size(build):
    def compile_size(value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FilterValueError(f"must be a whole number, not {value!r}")
        return lambda account: build(value)
    return compile_size


def _keyword_value(value):
    try:
        return check_keyword(value)
    except KeywordError as error:
        raise FilterValueError(str(error)) from None


def _keyword(negate):
    def compile_keyword(value):
        keyword = _keyword_value(value)
        if negate:
            return lambda account: ~sql.has_keyword(account, keyword)
        return lambda account: sql.has_keyword(account, keyword)
    return compile_keyword


def _thread_keyword(mode):
    def compile_keyword(value):
        keyword = _keyword_value(value)
        return lambda account: sql.thread_keyword(account, keyword, mode)
    return compile_keyword


def _attachment(value):
    if not isinstance(value, bool):
        raise FilterValueError(f"must be a boolean, not {value!r}")
    return lambda account: sql.has_attachment(value)


def _header(value):
    if (not isinstance(value, list) or not 1 <= len(value) <= 2
            or not all(isinstance(item, str) for item in value)):
        raise FilterValueError("must be an array of a header name and maybe a text")
    name = value[0].strip().lower()
    if not name or len(name) > 255:
        raise FilterValueError("must name a header field")
    if len(value) == 1:
        return lambda account: sql.header_present(account, name)
    folded = value[1].casefold()
    return lambda account: sql.header_contains(account, name, folded)


# Text conditions and the search field each reads (None: all of them).
TEXT_FIELDS = {"text": None, "from": "from", "to": "to", "cc": "cc", "bcc": "bcc",
               "subject": "subject", "body": "body"}


def _text(field, languages):
    def compile_text(value):
        text = filter_string(value)
        return lambda account: sql.text_match(account, field, text, languages)
    return compile_text


def _keyword_sort(mode):
    def build(comparator):
        keyword = _keyword_value(comparator["keyword"])
        return lambda account: (sql.keyword_sort(account, keyword, mode), False)
    return SortWith(frozenset({"keyword"}), build)


def _column_sort(name):
    expression, folded = sql.sort_expression(name)
    return lambda account: (expression, folded)


def email_query_spec(languages):
    """
    @param languages: the languages text conditions stem in.
    @return: the L{QuerySpec} of Email/query.
    """
    text = {name: _text(field, languages) for name, field in TEXT_FIELDS.items()}
    return QuerySpec(
        filter_properties={
            "inMailbox": _mailbox,
            "inMailboxOtherThan": _mailboxes_other_than,
            "before": _date(sql.received_before),
            "after": _date(sql.received_after),
            "minSize": _size(sql.size_at_least),
            "maxSize": _size(sql.size_below),
            "allInThreadHaveKeyword": _thread_keyword("all"),
            "someInThreadHaveKeyword": _thread_keyword("some"),
            "noneInThreadHaveKeyword": _thread_keyword("none"),
            "hasKeyword": _keyword(False),
            "notKeyword": _keyword(True),
            "hasAttachment": _attachment,
            "header": _header,
            **text,
        },
        sort_properties={
            **{name: _column_sort(name) for name in sql.SORT_COLUMNS},
            "hasKeyword": _keyword_sort(None),
            "allInThreadHaveKeyword": _keyword_sort("all"),
            "someInThreadHaveKeyword": _keyword_sort("some"),
        },
    )


def _uses_threads(filter_value, sort_value):
    def walk(node):
        if not isinstance(node, dict):
            return False
        if "operator" in node:
            return any(walk(child) for child in node.get("conditions") or [])
        return bool(THREAD_CONDITIONS & set(node))
    sorts = {comparator.get("property") for comparator in sort_value or []
             if isinstance(comparator, dict)}
    return walk(filter_value) or bool(sorts & THREAD_CONDITIONS)


def _query_changes_related(connection, account, numbers, since, budget):
    # Threads changed since the client's state, and the threads of the
    # messages that changed: all their messages now.
    changed_threads = changes_since(connection, account, THREAD, since, budget)
    threads = {thread_number(t) for t in (
        *changed_threads.created, *changed_threads.updated)} - {None}
    for row in email_rows(connection, account, numbers).values():
        threads.add(row["thread_id"])
    found = thread_emails(connection, account, threads)
    return [number for members in found.values() for number in members]


def _required_text(filter_value):
    # A text condition every result meets: one of the filter itself, or of
    # a condition directly under a top-level AND, as (field, text).
    conditions = [filter_value]
    if isinstance(filter_value, dict) and filter_value.get("operator") == "AND":
        conditions = filter_value.get("conditions") or []
    for condition in conditions:
        if isinstance(condition, dict) and "operator" not in condition:
            for name, field in TEXT_FIELDS.items():
                if isinstance(condition.get(name), str):
                    return field, condition[name]
    return None


def _only_mailbox(filter_value):
    # The mailbox number of a filter that is one inMailbox condition alone.
    if isinstance(filter_value, dict) and set(filter_value) == {"inMailbox"}:
        return decode_id(MAILBOX_PREFIX, filter_value["inMailbox"])
    return None


class EmailQuery(QueryEngine):
    """
    Email/query compiled to SQL.

    @param store: the L{Store}.
    @param languages: the languages text conditions stem in.
    @param max_changes: the most thread changes /queryChanges reads.
    """

    def __init__(self, store, languages, max_changes):
        self._store = store
        self._languages = languages
        self._spec = email_query_spec(languages)
        self._max_changes = max_changes

    def compile(self, filter_value, sort_value):
        where = compile_filter(self._spec, filter_value, _Clauses)
        comparators = compile_sort(self._spec, sort_value)
        return (where, comparators, _uses_threads(filter_value, sort_value),
                _only_mailbox(filter_value), _required_text(filter_value))

    def _sql(self, account, compiled, extra):
        where, comparators = compiled[:2]
        sorts = []
        for comparator in comparators:
            expression, folded = comparator.key(account)
            sorts.append((expression, folded, comparator.ascending, comparator.collate))
        return where(account), sorts, extra.get("collapseThreads", False)

    async def run(self, context, account, compiled, extra):
        modseq, numbers = await self._store.read(
            sql.query, account, *self._sql(account, compiled, extra))
        return modseq, [email_id(number) for number in numbers]

    async def run_window(self, context, account, compiled, extra, window):
        if window.anchor is not None:
            return await super().run_window(context, account, compiled, extra, window)
        text = compiled[4]
        matches = None if text is None else sql.text_matches(account, *text, self._languages)
        modseq, start, numbers, total = await self._store.read(
            sql.query_window, account, *self._sql(account, compiled, extra), window.position,
            window.limit, compiled[3], matches)
        return modseq, start, [email_id(number) for number in numbers], total

    async def related_changes(self, context, account, compiled, extra, changed, since):
        if not (extra.get("collapseThreads") or compiled[2]):
            return changed
        numbers = {email_number(object_id) for object_id in changed} - {None}
        related = await self._store.read(
            _query_changes_related, account, numbers, since, self._max_changes
        )
        return dict.fromkeys([*changed, *(email_id(number) for number in related)])
