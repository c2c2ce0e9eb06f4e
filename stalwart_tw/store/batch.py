"""
WriteBatch: the one unit of change to a node's data.

A batch is built from state read earlier (by JMAP, LMTP or the directory)
and says everything the write changes: row inserts, updates and deletes, the
change-log records (account, type, object id, created/updated/destroyed),
blob references gained and lost, and, for each account it writes, the modseq
that account had when the batch was built.

Applying a batch is a pure function of the batch and the database: it runs
in one transaction together with the applied index, so a crash leaves all of
the batch or none of it, and every node that applies the same batches in the
same order ends with the same data. A batch whose expected modseqs no longer
match is skipped as a whole (the applied index still moves, identically on
every node) and reported as a conflict.

Batches serialise to msgpack bytes so the Raft log can carry them; decoding
checks every table, column and value, so a corrupt entry is refused whole.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import msgpack
from sqlalchemy import and_, bindparam, delete, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError

from stalwart_tw.store import schema
from stalwart_tw.store.engine import APPLIED_INDEX, read_applied_index, savepoint
from stalwart_tw.store.errors import InvalidBatch

FORMAT_VERSION = 1

CREATED, UPDATED, DESTROYED = "c", "u", "d"
CHANGE_KINDS = {"created": CREATED, "updated": UPDATED, "destroyed": DESTROYED}

INSERT, UPDATE, DELETE = "i", "u", "d"

# The values a batch may carry: what msgpack round-trips exactly.
_SCALARS = (type(None), bool, int, float, str, bytes)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# In a savepoint's undo journal: the key was not there before.
_ABSENT = object()

# Tables that only apply() (or, for the Raft log, the log itself) writes; a
# batch may not name them.
_RESERVED_TABLES = {
    "node_state", "account_state", "type_state", "changelog", "blobs", "raft_log", "raft_state",
}


def _check_table(name):
    table = schema.metadata.tables.get(name)
    if table is None or name in _RESERVED_TABLES:
        raise InvalidBatch(f"a batch cannot write table {name!r}")
    return table


def _check_row(table, row, what):
    if not isinstance(row, dict) or not row:
        raise InvalidBatch(f"{what} for table {table.name!r} must be a non-empty mapping")
    for column, value in row.items():
        if column not in table.c:
            raise InvalidBatch(f"table {table.name!r} has no column {column!r}")
        if not isinstance(value, _SCALARS):
            raise InvalidBatch(
                f"column {table.name}.{column} cannot carry a {type(value).__name__}"
            )
        _check_fits(table, column, value)


def _check_fits(table, column, value):
    # Refused here, a value never reaches a database that would truncate it
    # (SQLite) or refuse it at apply time (PostgreSQL).
    if isinstance(value, int) and not isinstance(value, bool):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidBatch(f"column {table.name}.{column}: {value} overflows 64 bits")
    length = getattr(table.c[column].type, "length", None)
    if isinstance(value, str) and length is not None and len(value) > length:
        raise InvalidBatch(
            f"column {table.name}.{column} holds at most {length} characters, not {len(value)}"
        )


def _check_int(value, what):
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidBatch(f"{what} must be an integer, not {value!r}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidBatch(f"{what} {value} overflows 64 bits")
    return value


def _check_object_id(object_id):
    if isinstance(object_id, int) and not isinstance(object_id, bool):
        object_id = str(object_id)
    if not isinstance(object_id, str) or not 0 < len(object_id) <= 255:
        raise InvalidBatch(f"an object id must be a string of 1 to 255 characters, not {object_id!r}")
    return object_id


def _check_str(value, what):
    if not isinstance(value, str) or not value:
        raise InvalidBatch(f"{what} must be a non-empty string, not {value!r}")
    return value


class WriteBatch:
    """
    The changes of one write, built without touching the database.

    @ivar operations: row operations in order: C{("i", table, values)},
        C{("u", table, where, values)} and C{("d", table, where)}.
    @ivar changes: change-log records C{(account_id, type_name, object_id,
        kind)} with kind C{"c"}, C{"u"} or C{"d"}.
    @ivar blob_references: blob hash -> C{[delta, size]}: references gained
        (positive) or released (negative) on each blob.
    @ivar expected_modseqs: account id -> the modseq it had when the batch
        was built.
    """

    def __init__(self):
        self.operations = []
        self.changes = []
        self.blob_references = {}
        self.expected_modseqs = {}
        # Table name -> its operations in order, covering operations[:_indexed]
        # of the list _indexed_list; caught up on demand.
        self._by_table = {}
        self._indexed = 0
        self._indexed_list = self.operations
        # Open savepoints, and while any is open, how to undo each change to
        # blob_references and expected_modseqs: (mapping, key, old value).
        self._savepoint_depth = 0
        self._journal = []

    def __repr__(self):
        return (
            f"<WriteBatch {len(self.operations)} operations, {len(self.changes)} changes, "
            f"{len(self.blob_references)} blobs, expects {self.expected_modseqs}>"
        )

    def __eq__(self, other):
        if not isinstance(other, WriteBatch):
            return NotImplemented
        return self._as_message() == other._as_message()

    def __bool__(self):
        return bool(self.operations or self.changes or self.blob_references)

    def insert(self, table_name, **values):
        """
        Insert one row.
        """
        _check_row(_check_table(table_name), values, "an insert")
        self.operations.append((INSERT, table_name, values))
        return self

    def update(self, table_name, where, **values):
        """
        Set C{values} on the rows whose columns equal C{where}.
        """
        table = _check_table(table_name)
        _check_row(table, where, "a where clause")
        _check_row(table, values, "an update")
        self.operations.append((UPDATE, table_name, dict(where), values))
        return self

    def delete(self, table_name, **where):
        """
        Delete the rows whose columns equal C{where}.
        """
        _check_row(_check_table(table_name), where, "a where clause")
        self.operations.append((DELETE, table_name, where))
        return self

    def log_change(self, account_id, type_name, object_id, kind):
        """
        Record that an object of an account was created, updated or
        destroyed; applying the batch advances that account's modseq.

        @param kind: C{"created"}, C{"updated"} or C{"destroyed"}.
        """
        if kind not in CHANGE_KINDS:
            raise InvalidBatch(f"unknown change kind {kind!r}")
        self.changes.append(
            (
                _check_int(account_id, "an account id"),
                _check_str(type_name, "a type name"),
                _check_object_id(object_id),
                CHANGE_KINDS[kind],
            )
        )
        return self

    def reference_blob(self, blob_hash, size, count=1):
        """
        Take C{count} references on a blob whose file is already stored.
        """
        self._add_reference(blob_hash, count, size)
        return self

    def release_blob(self, blob_hash, count=1):
        """
        Drop C{count} references on a blob.
        """
        self._add_reference(blob_hash, -count, None)
        return self

    def _add_reference(self, blob_hash, delta, size):
        _check_str(blob_hash, "a blob hash")
        if len(blob_hash) > 64:
            raise InvalidBatch(f"not a blob hash: {blob_hash!r}")
        if self._savepoint_depth:
            old = self.blob_references.get(blob_hash, _ABSENT)
            self._journal.append(
                (self.blob_references, blob_hash, old if old is _ABSENT else list(old))
            )
        entry = self.blob_references.setdefault(blob_hash, [0, None])
        entry[0] += delta
        if size is not None:
            entry[1] = _check_int(size, "a blob size")

    def expect_modseq(self, account_id, modseq):
        """
        Apply this batch only if the account is still at C{modseq}.
        """
        account_id = _check_int(account_id, "an account id")
        modseq = _check_int(modseq, "a modseq")
        if self._savepoint_depth:
            self._journal.append(
                (self.expected_modseqs, account_id, self.expected_modseqs.get(account_id, _ABSENT))
            )
        self.expected_modseqs[account_id] = modseq
        return self

    @contextmanager
    def savepoint(self):
        """
        Run a block whose additions to the batch are undone if it raises:
        its operations, change-log records, blob reference deltas and
        expected modseqs go, the batch is as it was before the block, and
        the exception propagates. Savepoints nest.

        Only what goes through the batch's methods is undone.
        """
        marks = (len(self.operations), len(self.changes), len(self._journal))
        self._savepoint_depth += 1
        try:
            yield self
        except BaseException:
            self._roll_back(*marks)
            raise
        finally:
            self._savepoint_depth -= 1
            if not self._savepoint_depth:
                # No savepoint left that could roll back what was journaled.
                self._journal.clear()

    def _roll_back(self, operation_count, change_count, journal_length):
        self._catch_up_index()
        for op in reversed(self.operations[operation_count:]):
            self._by_table[op[1]].pop()
        del self.operations[operation_count:]
        self._indexed = operation_count
        del self.changes[change_count:]
        while len(self._journal) > journal_length:
            mapping, key, old = self._journal.pop()
            if old is _ABSENT:
                del mapping[key]
            elif isinstance(old, list):
                # Restored in place, so the mapping keeps its order.
                mapping[key][:] = old
            else:
                mapping[key] = old

    def operations_on(self, table_name):
        """
        @return: a list of the batch's row operations on C{table_name}, in
            the order they apply.
        """
        self._catch_up_index()
        return list(self._by_table.get(table_name, ()))

    def _catch_up_index(self):
        if self._indexed_list is not self.operations or self._indexed > len(self.operations):
            # The list was replaced or cut behind our back: index it afresh.
            self._by_table, self._indexed, self._indexed_list = {}, 0, self.operations
        for op in self.operations[self._indexed:]:
            self._by_table.setdefault(op[1], []).append(op)
        self._indexed = len(self.operations)

    def _as_message(self):
        return {
            "v": FORMAT_VERSION,
            "ops": [list(op) for op in self.operations],
            "changes": [list(change) for change in self.changes],
            "blobs": [[h, d, s] for h, (d, s) in sorted(self.blob_references.items())],
            "expect": sorted([a, m] for a, m in self.expected_modseqs.items()),
        }

    def to_bytes(self):
        """
        @return: the batch as msgpack bytes.
        """
        return msgpack.packb(self._as_message(), use_bin_type=True)

    @classmethod
    def from_bytes(cls, data):
        """
        Decode and validate a batch.

        @raise InvalidBatch: the bytes are not a valid batch.
        """
        try:
            message = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as error:
            raise InvalidBatch(f"undecodable batch: {error}") from None
        if not isinstance(message, dict) or message.get("v") != FORMAT_VERSION:
            raise InvalidBatch("not a batch of a known format version")
        batch = cls()
        try:
            for op in message["ops"]:
                batch._decode_operation(op)
            for account_id, type_name, object_id, kind in message["changes"]:
                if kind not in CHANGE_KINDS.values():
                    raise InvalidBatch(f"unknown change kind {kind!r}")
                name = next(k for k, v in CHANGE_KINDS.items() if v == kind)
                batch.log_change(account_id, type_name, object_id, name)
            for blob_hash, delta, size in message["blobs"]:
                batch._add_reference(blob_hash, _check_int(delta, "a reference delta"), size)
            for account_id, modseq in message["expect"]:
                batch.expect_modseq(account_id, modseq)
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidBatch(f"malformed batch: {error!r}") from None
        return batch

    def _decode_operation(self, op):
        kind, table_name, *rest = op
        if kind == INSERT and len(rest) == 1:
            self.insert(table_name, **rest[0])
        elif kind == UPDATE and len(rest) == 2:
            self.update(table_name, rest[0], **rest[1])
        elif kind == DELETE and len(rest) == 1:
            self.delete(table_name, **rest[0])
        else:
            raise InvalidBatch(f"malformed operation {op!r}")


@dataclass
class ApplyResult:
    """
    What applying a batch did.

    @ivar index: the applied index the batch was given.
    @ivar conflicts: accounts whose modseq had moved; when not empty, nothing
        of the batch was applied.
    @ivar duplicate: the index had been applied before; nothing was done.
    @ivar rejected: why the data refused the batch (a broken constraint, a
        reference it does not hold); when set, nothing of it was applied.
    @ivar modseqs: account id -> its new modseq.
    @ivar type_states: account id -> {type name -> new modseq} for the types
        the batch changed, what the state-change bus publishes.
    @ivar changed: account id -> {type name -> frozenset of object ids} the
        batch logged as created, updated or destroyed (what caches of this
        node drop).
    """

    index: int
    conflicts: tuple = ()
    duplicate: bool = False
    rejected: str = None
    modseqs: dict = field(default_factory=dict)
    type_states: dict = field(default_factory=dict)
    changed: dict = field(default_factory=dict)

    @property
    def applied(self):
        return not self.conflicts and not self.duplicate and self.rejected is None


# Apply runs on every node for every entry, so its statements are built once
# with bind parameters and reused; building them per call costs more than
# executing them.


@lru_cache(maxsize=512)
def _statement(kind, table_name, where_columns=(), value_columns=()):
    table = schema.metadata.tables[table_name]
    if kind == INSERT:
        return insert(table)
    condition = and_(*(table.c[name] == bindparam(f"w_{name}") for name in where_columns))
    if kind == UPDATE:
        return update(table).where(condition).values(
            {name: bindparam(f"v_{name}") for name in value_columns}
        )
    if kind == DELETE:
        return delete(table).where(condition)
    return select(*(table.c[name] for name in value_columns)).where(condition)


def _parameters(where, values=None):
    parameters = {f"w_{name}": value for name, value in where.items()}
    if values:
        parameters.update((f"v_{name}", value) for name, value in values.items())
    return parameters


def _update(connection, table_name, where, values):
    statement = _statement(UPDATE, table_name, tuple(where), tuple(values))
    return connection.execute(statement, _parameters(where, values))


def _delete(connection, table_name, where):
    statement = _statement(DELETE, table_name, tuple(where))
    return connection.execute(statement, _parameters(where))


def _select_one(connection, table_name, column, where):
    statement = _statement("select", table_name, tuple(where), (column,))
    return connection.execute(statement, _parameters(where)).scalar()


def _run_operation(connection, op):
    kind, table_name = op[0], op[1]
    if kind == INSERT:
        connection.execute(_statement(INSERT, table_name), op[2])
    elif kind == UPDATE:
        _update(connection, table_name, op[2], op[3])
    else:
        _delete(connection, table_name, op[2])


def _apply_blob_references(connection, blob_references):
    for blob_hash, (delta, size) in sorted(blob_references.items()):
        if delta == 0:
            continue
        key = {"blob_hash": blob_hash}
        current = _select_one(connection, "blobs", "refcount", key)
        if current is None:
            if delta < 0 or size is None:
                raise InvalidBatch(f"releases a reference on unknown blob {blob_hash}")
            connection.execute(
                _statement(INSERT, "blobs"),
                {"blob_hash": blob_hash, "size": size, "refcount": delta},
            )
        elif current + delta < 0:
            raise InvalidBatch(f"releases more references than blob {blob_hash} has")
        elif current + delta == 0:
            # No row, no reference: the blob store may now delete the file
            # unless an upload still holds it in blob_temp.
            _delete(connection, "blobs", key)
        else:
            _update(connection, "blobs", key, {"refcount": current + delta})


def _upsert(connection, table, key, values):
    if _update(connection, table.name, key, values).rowcount == 0:
        connection.execute(_statement(INSERT, table.name), {**key, **values})


_SELECT_MODSEQS = (
    select(schema.account_state.c.account_id, schema.account_state.c.modseq)
    .where(schema.account_state.c.account_id.in_(bindparam("accounts", expanding=True)))
)


def _read_modseqs(connection, accounts):
    modseqs = dict.fromkeys(accounts, 0)
    if accounts:
        modseqs.update(dict(connection.execute(_SELECT_MODSEQS, {"accounts": accounts}).all()))
    return modseqs


def _log_changes(connection, batch, current):
    result_modseqs, type_states = {}, {}
    for account_id in sorted({change[0] for change in batch.changes}):
        result_modseqs[account_id] = current[account_id] + 1
    records, logged = [], set()
    for change in batch.changes:
        # The same change noted twice (a mailbox whose counts two messages
        # of the batch move) is one record.
        if change in logged:
            continue
        logged.add(change)
        account_id, type_name, object_id, kind = change
        modseq = result_modseqs[account_id]
        records.append(
            {"account_id": account_id, "modseq": modseq, "type_name": type_name,
             "object_id": object_id, "kind": kind}
        )
        type_states.setdefault(account_id, {})[type_name] = modseq
    if records:
        connection.execute(_statement(INSERT, "changelog"), records)
    for account_id, modseq in result_modseqs.items():
        _upsert(connection, schema.account_state, {"account_id": account_id}, {"modseq": modseq})
        for type_name in type_states[account_id]:
            _upsert(
                connection,
                schema.type_state,
                {"account_id": account_id, "type_name": type_name},
                {"modseq": modseq},
            )
    return result_modseqs, type_states


def _set_applied_index(connection, index):
    _upsert(connection, schema.node_state, {"key": APPLIED_INDEX}, {"value": index})


def apply_batch(connection, batch, index):
    """
    Apply C{batch} as the entry at C{index}, inside the caller's transaction.

    Applying is total, so every node reaches the same result from the same
    entry: an index at or below the applied index is a replay and changes
    nothing; a batch built on stale state, or one the data refuses (a
    constraint, a reference it does not hold), changes nothing but the
    applied index and says why in the result.

    @return: an L{ApplyResult}.
    @raise Exception: only what depends on this node (a full disk, an I/O
        error): the caller's transaction must roll back, and the applied
        index has not moved.
    """
    if index <= read_applied_index(connection):
        return ApplyResult(index=index, duplicate=True)
    accounts = sorted({change[0] for change in batch.changes} | set(batch.expected_modseqs))
    current = _read_modseqs(connection, accounts)
    stale = tuple(
        account_id
        for account_id, modseq in sorted(batch.expected_modseqs.items())
        if current[account_id] != modseq
    )
    if stale:
        result = ApplyResult(index=index, conflicts=stale)
    else:
        try:
            with savepoint(connection, "apply_batch"):
                result = _apply_changes(connection, batch, index, current)
        except _REFUSED_BY_DATA as error:
            result = ApplyResult(index=index, rejected=_describe(error))
    _set_applied_index(connection, index)
    return result


def _run_operations(connection, operations):
    # Consecutive inserts of one shape into one table go as one
    # executemany: a message is a score of rows, a batch many messages.
    pending, shape = [], None
    for op in operations:
        if op[0] == INSERT:
            op_shape = (op[1], tuple(op[2]))
            if op_shape == shape:
                pending.append(op[2])
                continue
            if pending:
                connection.execute(_statement(INSERT, shape[0]), pending)
            pending, shape = [op[2]], op_shape
            continue
        if pending:
            connection.execute(_statement(INSERT, shape[0]), pending)
            pending, shape = [], None
        _run_operation(connection, op)
    if pending:
        connection.execute(_statement(INSERT, shape[0]), pending)


def _apply_changes(connection, batch, index, current):
    _run_operations(connection, batch.operations)
    _apply_blob_references(connection, batch.blob_references)
    modseqs, type_states = _log_changes(connection, batch, current)
    changed = {}
    for account_id, type_name, object_id, _ in batch.changes:
        changed.setdefault(account_id, {}).setdefault(type_name, set()).add(object_id)
    changed = {
        account_id: {type_name: frozenset(ids) for type_name, ids in types.items()}
        for account_id, types in changed.items()
    }
    return ApplyResult(index=index, modseqs=modseqs, type_states=type_states, changed=changed)


# Errors that any node applying the same batch to the same data meets alike.
_REFUSED_BY_DATA = (InvalidBatch, IntegrityError, DataError)


def _describe(error):
    if isinstance(error, InvalidBatch):
        return str(error)
    return str(getattr(error, "orig", error)).splitlines()[0]
