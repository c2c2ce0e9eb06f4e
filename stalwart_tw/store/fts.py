"""
The full-text index of emails on SQLite: an FTS5 index over the
C{email_search} rows (store/search_text.py makes them), external content,
kept in step by triggers in the transaction that writes a row. L{install}
declares it on the metadata, and L{match} turns the text of a JMAP filter
into a SELECT of email ids. All SQLite-only SQL (FTS5 DDL, MATCH) lives in
this module, so another backend can index the same rows with its own text
search.
"""

from sqlalchemy import Column, Integer, MetaData, Table, Text, event, false, select

from stalwart_tw.store import schema
from stalwart_tw.store.search_text import COLUMNS, JOINER_CHARS, account_rowids, terms

FTS_TABLE = "email_search_fts"

_COLUMN_LIST = ", ".join(COLUMNS.values())

# The ascii tokenizer with the joiners as token characters splits only at
# the spaces (and ASCII punctuation, which streams never hold) that
# index_row put between tokens; non-ASCII characters are all token
# characters, so a stream is indexed exactly as tokenised in Python.
_CREATE_INDEX = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
    f"{_COLUMN_LIST}, content='email_search', content_rowid='rowid', "
    f"tokenize=\"ascii tokenchars '{JOINER_CHARS.replace(chr(92), '')}'\")"
)


def _values(prefix):
    return ", ".join(f"{prefix}.{column}" for column in COLUMNS.values())


_INSERT_NEW = f"INSERT INTO {FTS_TABLE}(rowid, {_COLUMN_LIST}) VALUES (new.rowid, {_values('new')});"
# An external content index forgets a row given exactly the values it indexed.
_FORGET_OLD = (
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, {_COLUMN_LIST}) "
    f"VALUES ('delete', old.rowid, {_values('old')});"
)
_CREATE_TRIGGERS = (
    f"CREATE TRIGGER IF NOT EXISTS {FTS_TABLE}_insert AFTER INSERT ON email_search "
    f"BEGIN {_INSERT_NEW} END",
    f"CREATE TRIGGER IF NOT EXISTS {FTS_TABLE}_delete AFTER DELETE ON email_search "
    f"BEGIN {_FORGET_OLD} END",
    f"CREATE TRIGGER IF NOT EXISTS {FTS_TABLE}_update "
    f"AFTER UPDATE OF rowid, {_COLUMN_LIST} ON email_search "
    f"BEGIN {_FORGET_OLD} {_INSERT_NEW} END",
)


def _has_table(connection, name):
    return connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE name = ?", (name,)
    ).first() is not None


def _create_index(target, connection, **kw):
    if connection.dialect.name != "sqlite" or not _has_table(connection, "email_search"):
        return
    existed = _has_table(connection, FTS_TABLE)
    connection.exec_driver_sql(_CREATE_INDEX)
    for statement in _CREATE_TRIGGERS:
        connection.exec_driver_sql(statement)
    if not existed:
        # Rows written before the index existed are indexed now.
        connection.exec_driver_sql(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')")


def _drop_index(target, connection, **kw):
    if connection.dialect.name == "sqlite":
        # The triggers go with email_search itself.
        connection.exec_driver_sql(f"DROP TABLE IF EXISTS {FTS_TABLE}")


def install(metadata):
    """
    Have C{metadata.create_all} create, on SQLite, the FTS5 index over
    C{email_search} and the triggers that keep it in step (and
    C{drop_all} drop it). Idempotent.
    """
    if not event.contains(metadata, "after_create", _create_index):
        event.listen(metadata, "after_create", _create_index)
    if not event.contains(metadata, "before_drop", _drop_index):
        event.listen(metadata, "before_drop", _drop_index)


install(schema.metadata)

# The FTS5 table as SQLAlchemy sees it, outside schema.metadata so that
# create_all leaves its creation to _create_index. The column named like
# the table is FTS5's hidden column that MATCH is applied to.
_index = Table(
    FTS_TABLE,
    MetaData(),
    Column("rowid", Integer, primary_key=True),
    Column(FTS_TABLE, Text),
    *(Column(column, Text) for column in COLUMNS.values()),
)


# --- Queries ---------------------------------------------------------------

def _expression(term):
    quoted = ['"' + " ".join(tokens).replace('"', '""') + '"' for tokens in term.alternatives]
    if term.prefix:
        return f"{quoted[0]} *"
    if len(quoted) == 1:
        return quoted[0]
    return "(" + " OR ".join(quoted) + ")"


def query_expression(field, text, languages=("en",)):
    """
    @return: the FTS5 query for C{text} on C{field} (None: all fields), or
        None when the text holds no word. Every token is a quoted string,
        so user text never reads as an FTS5 operator or column filter.
    """
    if field is not None and field not in COLUMNS:
        raise ValueError(f"not a search field: {field!r}")
    found = terms(text, languages)
    if not found:
        return None
    expression = " AND ".join(_expression(term) for term in found)
    if field is not None:
        expression = f"{{{COLUMNS[field]}}} : ({expression})"
    return expression


def match(account_id, field, text, languages=("en",)):
    """
    The ids of the emails of an account whose C{field} (None: any field,
    the RFC 8621 C{text} filter) matches C{text}, as a SELECT to use in
    C{emails.c.id.in_(...)}.

    Words are ANDed, each matching itself or its stem in any of
    C{languages}; C{"quoted phrases"} match adjacent words; CJK text
    matches by bigrams. Text without a word matches nothing.
    """
    low, high = account_rowids(account_id)
    expression = query_expression(field, text, languages)
    if expression is None:
        return select(schema.email_search.c.email_id).where(false())
    # The account's rows are one rowid range, which FTS5 seeks to in each
    # term's list of rows, and the email id is the rowid's low half.
    return select((_index.c.rowid - low).label("email_id")).where(
        _index.c[FTS_TABLE].match(expression),
        _index.c.rowid.between(low, high),
    )
