"""
A data type that lives in the tests alone: notes ({id, title, body}) per
account, stored in a table of their own, served by an extension of their
own. It proves that a type plugs into the server through the extension
seam without any edit of jmap/ or http/, and it is the type the standard
/copy is tested on.

The table is declared on the shared metadata at import, as a type module's
table would be in store/schema.py, so every store a test opens has it.
"""

from sqlalchemy import BigInteger, Column, String, Table, Text, select

from stalwart_tw.jmap.errors import MethodError
from stalwart_tw.jmap.query import UNSUPPORTED_FILTER, UNSUPPORTED_SORT, QueryEngine
from stalwart_tw.jmap.server import Extension
from stalwart_tw.jmap.standard import (
    SetError,
    WritableType,
    standard_changes,
    standard_copy,
    standard_get,
    standard_set,
)
from stalwart_tw.jmap.query import standard_query, standard_query_changes
from stalwart_tw.store import schema
from stalwart_tw.store.changes import changes_since, type_modseq

NOTES_CAPABILITY = "urn:test:notes"
NOTE = "Note"

if "test_notes" in schema.metadata.tables:
    notes_table = schema.metadata.tables["test_notes"]
else:
    notes_table = Table(
        "test_notes",
        schema.metadata,
        Column("account_id", BigInteger, primary_key=True, autoincrement=False),
        Column("id", String(64), primary_key=True),
        Column("title", Text, nullable=False),
        Column("body", Text, nullable=True),
    )


def _whole_number(value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("must be a whole number")
    return value


def _string(value):
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _read(connection, account, ids):
    query = select(notes_table).where(notes_table.c.account_id == account)
    if ids is not None:
        query = query.where(notes_table.c.id.in_(sorted(ids)))
    return {
        row.id: {"id": row.id, "title": row.title, "body": row.body}
        for row in connection.execute(query)
    }


def _read_with_state(connection, account, ids):
    return type_modseq(connection, account, NOTE), _read(connection, account, ids)


class Notes(WritableType):
    """
    Notes by account. An account listed in C{without_notes} holds none.
    Arguments of its own: C{bodyLimit} on /get (bodies cut to that many
    characters), C{titlePrefix} on /set and /copy (put before the title of
    every note created), C{bodyContains} on /query and /queryChanges,
    C{quiet} on /changes (accepted, and changes nothing).
    """

    name = NOTE
    properties = frozenset({"id", "title", "body"})
    arguments = {
        "get": {"bodyLimit": _whole_number},
        "set": {"titlePrefix": _string},
        "copy": {"titlePrefix": _string},
        "changes": {"quiet": bool},
        "query": {"bodyContains": _string},
        "queryChanges": {"bodyContains": _string},
    }

    def __init__(self, store, without_notes=()):
        self._store = store
        self._without_notes = frozenset(without_notes)
        # The properties each read was asked for, most recent last.
        self.reads = []

    def supports_account(self, account):
        return account not in self._without_notes

    async def read(self, context, account, ids, properties=None, extra=None):
        return (await self.read_with_state(context, account, ids, properties, extra))[1]

    async def read_with_state(self, context, account, ids, properties=None, extra=None):
        self.reads.append(properties)
        modseq, found = await self._store.read(_read_with_state, account, ids)
        limit = (extra or {}).get("bodyLimit")
        if limit is not None:
            for note in found.values():
                note["body"] = None if note["body"] is None else note["body"][:limit]
        return modseq, found

    def modseq(self, context, account):
        return self._store.read(type_modseq, account, NOTE)

    def changes(self, context, account, since, max_changes, extra=None):
        return self._store.read(changes_since, account, NOTE, since, max_changes)

    def read_drafted(self, draft, call, account, ids):
        found = {}
        for note_id in ids:
            row = draft.first("test_notes", account_id=account, id=note_id)
            if row is not None:
                found[note_id] = {"id": row["id"], "title": row["title"], "body": row["body"]}
        return found

    def _check(self, properties):
        unknown = sorted(set(properties) - {"title", "body", "id"})
        if unknown:
            raise SetError("invalidProperties", f"no property {unknown[0]!r}", unknown)
        if not isinstance(properties.get("title"), str):
            raise SetError("invalidProperties", "title is required", ["title"])
        if not isinstance(properties.get("body", ""), (str, type(None))):
            raise SetError("invalidProperties", "body must be a string", ["body"])

    def build_create(self, draft, call, creation_id, properties):
        self._check(properties)
        if "id" in properties:
            raise SetError("invalidProperties", "id is set by the server", ["id"])
        # One sequence per account: the batch expects this account's modseq
        # alone, so nothing it reads and changes may be another's.
        number = draft.next_number(f"{NOTE}/{call.account}")
        note_id = f"n{number}"
        title = call.extra.get("titlePrefix", "") + properties["title"]
        draft.batch.insert(
            "test_notes", account_id=call.account, id=note_id, title=title,
            body=properties.get("body"),
        )
        draft.batch.log_change(call.account, NOTE, note_id, "created")
        return {"id": note_id}

    def build_update(self, draft, call, object_id, current, patched):
        self._check(patched)
        if patched["id"] != object_id:
            raise SetError("invalidProperties", "id cannot change", ["id"])
        draft.batch.update(
            "test_notes", {"account_id": call.account, "id": object_id},
            title=patched["title"], body=patched.get("body"),
        )
        draft.batch.log_change(call.account, NOTE, object_id, "updated")
        return None

    def build_destroy(self, draft, call, object_id, current):
        draft.batch.delete("test_notes", account_id=call.account, id=object_id)
        draft.batch.log_change(call.account, NOTE, object_id, "destroyed")


class NotesQuery(QueryEngine):
    """
    Note/query compiled to SQL: a filter of C{title} (exact) conditions
    joined by AND, a sort by title; C{bodyContains} narrows further.
    """

    def __init__(self, store):
        self._store = store
        # Every compiled query, most recent last.
        self.compiled = []

    def compile(self, filter_value, sort_value):
        conditions = []
        for name, value in (filter_value or {}).items():
            if name != "title":
                raise MethodError(UNSUPPORTED_FILTER, f"cannot filter on {name!r}")
            conditions.append(notes_table.c.title == value)
        order = [notes_table.c.id]
        for comparator in sort_value or []:
            if comparator.get("property") != "title":
                raise MethodError(UNSUPPORTED_SORT, f"cannot sort by {comparator.get('property')!r}")
            title = notes_table.c.title
            order.insert(-1, title.asc() if comparator.get("isAscending", True) else title.desc())
        compiled = (tuple(conditions), tuple(order))
        self.compiled.append(compiled)
        return compiled

    def run(self, context, account, compiled, extra):
        return self._store.read(_query, account, compiled, extra.get("bodyContains"))


def _query(connection, account, compiled, body_contains):
    conditions, order = compiled
    query = select(notes_table.c.id).where(notes_table.c.account_id == account, *conditions)
    if body_contains is not None:
        query = query.where(notes_table.c.body.contains(body_contains, autoescape=True))
    ids = list(connection.execute(query.order_by(*order)).scalars())
    return type_modseq(connection, account, NOTE), ids


class NotesExtension(Extension):
    """
    The notes capability: Note/get, /changes, /set, /copy, /query and
    /queryChanges.
    """

    capability = NOTES_CAPABILITY

    def __init__(self, store, writer, without_notes=()):
        self.notes = Notes(store, without_notes)
        self.query = NotesQuery(store)
        self._writer = writer

    def session_capability(self, principal):
        return {"maxNoteLength": 1000}, {}

    def methods(self):
        notes, writer, query = self.notes, self._writer, self.query
        return {
            "Note/get": lambda c, a: standard_get(notes, 100, c, a),
            "Note/changes": lambda c, a: standard_changes(notes, 100, c, a),
            "Note/set": lambda c, a: standard_set(notes, writer, 10, c, a),
            "Note/copy": lambda c, a: standard_copy(notes, writer, 10, c, a),
            "Note/query": lambda c, a: standard_query(notes, query, _Limits, c, a),
            "Note/queryChanges": lambda c, a: standard_query_changes(notes, query, _Limits, c, a),
        }


class _Limits:
    query_max_results = 100
    changes_max_results = 100


def notes_extension(node):
    """
    An extension factory for L{stalwart_tw.service.NodeService}.
    """
    return NotesExtension(node.store, node.writer)
