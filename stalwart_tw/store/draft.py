"""
Draft: the data as it will be once a WriteBatch applies.

A write of many objects (a JMAP /set with many creates, updates and
destroys) becomes one WriteBatch, built on a reader thread: nothing is
written until the batch commits, yet each object must see what the objects
before it did (a name taken, an address claimed, a row renamed or deleted).
A Draft answers reads with the stored rows, read through the builder's
connection, and the batch's pending row operations laid over them in
order, exactly as applying the batch would change them.

Foreign-key cascades are not laid over: builders delete dependent rows
themselves, so the batch says everything it changes.
"""

import sqlalchemy
from sqlalchemy import Boolean, and_, bindparam, true

from stalwart_tw.store import schema
from stalwart_tw.store.batch import DELETE, INSERT


class Draft:
    """
    The rows of the database as they will be once C{batch} applies on top
    of what C{connection} reads.

    Stored rows are read through C{connection}, whose read transaction is a
    snapshot that does not move while the batch is built; what pending
    operations make of them is worked out once per operation and kept, and
    worked out afresh for a table whose operations a savepoint rolled back.

    Rows are dicts of every column, in primary-key order (SQLite's order of
    values), so that building a batch gives the same batch on every run.

    @ivar connection: the connection the batch is built with; builders may
        also read through it directly.
    @ivar batch: the L{WriteBatch} being built; builders write into it.
    """

    def __init__(self, connection, batch):
        self.connection = connection
        self.batch = batch
        # Table name -> the _Overlay of its pending operations.
        self._overlays = {}
        # (table name, where items) -> the stored rows matching that where
        # clause of a pending update or delete: read once, the snapshot holds.
        self._stored_matches = {}

    def rows(self, table_name, **equals):
        """
        @return: a list of the rows of C{table_name} whose columns equal
            C{equals} (C{None} matches a null), in primary-key order.
        """
        table = _table(table_name)
        return self._find(table, None, None, equals)

    def first(self, table_name, **equals):
        """
        @return: the first row (in primary-key order) of C{table_name} whose
            columns equal C{equals}, or C{None}.
        """
        found = self.rows(table_name, **equals)
        return found[0] if found else None

    def next_number(self, sequence):
        """
        Take the next number of an C{id_sequences} row (1 for a new one),
        recording it in the batch: numbers are never handed out twice,
        even once the object holding the highest is gone.
        """
        row = self.first("id_sequences", name=sequence)
        number = (0 if row is None else row["last_value"]) + 1
        if row is None:
            self.batch.insert("id_sequences", name=sequence, last_value=number)
        else:
            self.batch.update("id_sequences", {"name": sequence}, last_value=number)
        return number

    def select(self, table_name, condition, predicate):
        """
        The rows of C{table_name} that a test selects.

        @param condition: a SQLAlchemy boolean clause selecting stored rows.
        @param predicate: C{predicate(row) -> bool}, the same test in Python,
            applied to rows the batch inserts or changes.
        @return: a list of the rows, in primary-key order.
        """
        return self._find(_table(table_name), condition, predicate, None)

    def _stored(self, table, condition, equals):
        # Stored rows by a condition, or by equals through a statement built
        # once per shape and reused (building one costs more than running it).
        if equals is None:
            statement = sqlalchemy.select(table).where(condition).order_by(*table.primary_key)
            return [dict(row._mapping) for row in self.connection.execute(statement)]
        return _run_equals(self.connection, table, equals)

    def _find(self, table, condition, predicate, equals):
        # Changed rows are tested by predicate, or looked up by equals.
        overlay = self._overlay(table)
        if overlay is None:
            return self._stored(table, condition, equals)
        changed = overlay.rows
        found = [
            row for row in self._stored(table, condition, equals)
            if _key(table, row) not in changed
        ]
        if equals is None:
            found.extend(
                dict(row) for row in changed.values() if row is not None and predicate(row)
            )
        else:
            found.extend(dict(changed[key]) for key in overlay.equal(table, equals))
        found.sort(key=lambda row: _sort_key(table, row))
        return found

    def _overlay(self, table):
        # The table's overlay brought up to date with the batch, or None
        # when the batch does not touch the table.
        operations = self.batch.operations_on(table.name)
        if not operations:
            return None
        overlay = self._overlays.get(table.name)
        if overlay is None or not overlay.follows(operations):
            overlay = self._overlays[table.name] = _Overlay()
        for op in operations[overlay.count:]:
            if op[0] == INSERT:
                self._fold_insert(table, overlay, op[2])
            elif op[0] == DELETE:
                for row_key, _ in self._matches(table, overlay, op[2]):
                    overlay.put(row_key, None)
            else:
                self._fold_update(table, overlay, op[2], op[3])
        overlay.count, overlay.last = len(operations), operations[-1]
        return overlay

    def _fold_insert(self, table, overlay, values):
        row = {column.name: _scalar_default(column) for column in table.c}
        row.update(_normalised(table, values))
        overlay.put(_key(table, row), row)

    def _fold_update(self, table, overlay, where, values):
        values = _normalised(table, values)
        for row_key, row in self._matches(table, overlay, where):
            changed = {**row, **values}
            changed_key = _key(table, changed)
            if changed_key != row_key:
                # The primary key moved: the row is gone from its old key.
                overlay.put(row_key, None)
            overlay.put(changed_key, changed)

    def _matches(self, table, overlay, where):
        """
        The rows a batch operation's where clause reaches now: changed rows
        as they are, stored rows not yet changed. Compared as apply does
        (C{column = value}), so a C{None} in the where clause reaches nothing.
        """
        if any(value is None for value in where.values()):
            return []
        changed = overlay.rows
        matches = [(row_key, changed[row_key]) for row_key in overlay.equal(table, where)]
        for row in self._stored_matching(table, where):
            row_key = _key(table, row)
            if row_key not in changed:
                matches.append((row_key, row))
        return matches

    def _stored_matching(self, table, where):
        cache_key = (table.name, tuple(sorted(where.items())))
        rows = self._stored_matches.get(cache_key)
        if rows is None:
            rows = self._stored(table, None, where)
            self._stored_matches[cache_key] = rows
        return rows


class _Overlay:
    """
    What a table's pending operations make of the rows they reach.
    """

    def __init__(self):
        # Primary key -> the row as it will be, or None: it will be gone.
        self.rows = {}
        # How many of the table's operations are folded in.
        self.count = 0
        # The last of them: held, so a rolled-back batch that grew again to
        # the same length cannot pass for the one folded in.
        self.last = None
        # Column names -> their values -> keys of the live rows holding
        # them; made when first asked for, then kept up to date by put.
        self._indexes = {}

    def put(self, key, row):
        """
        Set the row at C{key} (C{None}: it will be gone).
        """
        old = self.rows.get(key)
        for names, index in self._indexes.items():
            if old is not None:
                index[tuple(old[name] for name in names)].discard(key)
            if row is not None:
                index.setdefault(tuple(row[name] for name in names), set()).add(key)
        self.rows[key] = row

    def equal(self, table, equals):
        """
        @return: the keys, in primary-key order, of the live rows whose
            columns equal C{equals}.
        """
        names = tuple(sorted(equals))
        if all(column.name in equals for column in table.primary_key):
            key = tuple(equals[column.name] for column in table.primary_key)
            row = self.rows.get(key)
            return [key] if row is not None and _equal(row, equals) else []
        index = self._indexes.get(names)
        if index is None:
            index = self._indexes[names] = {}
            for key, row in self.rows.items():
                if row is not None:
                    index.setdefault(tuple(row[name] for name in names), set()).add(key)
        keys = index.get(tuple(equals[name] for name in names), ())
        return sorted(keys, key=lambda key: tuple(_sqlite_order(value) for value in key))

    def follows(self, operations):
        """
        @return: whether C{operations} begin with the ones folded in.
        """
        if self.count > len(operations):
            return False
        return self.count == 0 or operations[self.count - 1] is self.last


# (dialect, table, columns compared, columns that are null) -> the SQL
# text, its parameter names in order (or None: named), the result's
# column names and which of them are booleans.
_EQUALS_STATEMENTS = {}


def _equals_statement(connection, table, equals):
    names = tuple(sorted(equals))
    nulls = frozenset(name for name in names if equals[name] is None)
    dialect = connection.dialect
    shape = (dialect.name, table.name, names, nulls)
    found = _EQUALS_STATEMENTS.get(shape)
    if found is None:
        conditions = [
            table.c[name].is_(None) if name in nulls else table.c[name] == bindparam(f"p_{name}")
            for name in names
        ]
        # No ORDER BY: it could make the database walk the primary key
        # rather than the index that finds the few rows; sorted below.
        statement = sqlalchemy.select(table).where(and_(true(), *conditions))
        compiled = statement.compile(dialect=dialect)
        order = list(compiled.positiontup) if compiled.positional else None
        columns = [column.name for column in table.c]
        booleans = [index for index, column in enumerate(table.c) if isinstance(column.type, Boolean)]
        found = _EQUALS_STATEMENTS[shape] = (str(compiled), order, columns, booleans)
    return found


def _run_equals(connection, table, equals):
    """
    The stored rows whose columns equal C{equals} (C{None}: is null), in
    primary-key order. Run on the driver's cursor with SQL compiled once
    per shape for the connection's dialect: a builder asks this thousands
    of times per call, and SQLAlchemy's per-statement work costs more
    than SQLite's.
    """
    sql, order, columns, booleans = _equals_statement(connection, table, equals)
    if order is None:
        parameters = {f"p_{name}": value for name, value in equals.items() if value is not None}
    else:
        parameters = tuple(equals[name[2:]] for name in order)
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, parameters)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    found = []
    for row in rows:
        values = dict(zip(columns, row))
        for index in booleans:
            name = columns[index]
            if values[name] is not None:
                values[name] = bool(values[name])
        found.append(values)
    if len(found) > 1:
        found.sort(key=lambda row: _sort_key(table, row))
    return found


def _table(table_name):
    table = schema.metadata.tables.get(table_name)
    if table is None:
        raise KeyError(f"no table {table_name!r}")
    return table


def _scalar_default(column):
    default = column.default
    if default is not None and default.is_scalar:
        return default.arg
    return None


def _normalised(table, values):
    # SQLite stores booleans as 0/1 and SQLAlchemy reads them back as bools:
    # pending rows carry bools too, so rows compare and print alike.
    return {
        name: bool(value)
        if value is not None and isinstance(table.c[name].type, Boolean)
        else value
        for name, value in values.items()
    }


def _equal(row, equals):
    # Python's == already holds True == 1 and False == 0, as SQLite does.
    return all(row[name] == value for name, value in equals.items())


def _key(table, row):
    return tuple(row[column.name] for column in table.primary_key)


def _sort_key(table, row):
    return tuple(_sqlite_order(row[column.name]) for column in table.primary_key)


def _sqlite_order(value):
    # SQLite orders nulls, then numbers, then text, then blobs.
    if value is None:
        return (0, 0)
    if isinstance(value, (bool, int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, value)
