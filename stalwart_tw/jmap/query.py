"""
The standard /query and /queryChanges methods (RFC 8620 sections 5.5 and
5.6).

Who evaluates a query is a L{QueryEngine}: it checks and compiles the
filter and sort (before anything is read), then runs the compiled query.
L{InMemoryQuery} suits types whose objects are few and read whole through
L{DataType.read} (Principal now): every object is read, the filter is
applied to each, and the survivors are sorted. A type with many objects
(Email) hands the whole filter and sort to an engine of its own that
compiles them to SQL; the arguments, the windowing, the errors and the
response shapes below are the same for both.

An in-memory type describes what it can be queried by with a
L{QuerySpec}; the functions here check the arguments (each malformed one
is C{invalidArguments} saying what was wrong), build one predicate from
the whole filter tree before any object is looked at, and answer. The
queryState is the type's state string, so a query's state moves whenever
any object of the type changes (RFC 8620 allows this: it MAY change when
the results might have).

/queryChanges knows which objects changed from the type's change log, and
nothing of their old values: every changed id is C{removed}, and every
changed id in the current results is C{added} back at its index. The RFC
allows the extra removals, and this is right whatever the filter and sort
are, mutable properties included.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from stalwart_tw.jmap.errors import (
    CANNOT_CALCULATE_CHANGES,
    MethodError,
    invalid_arguments,
)
from stalwart_tw.jmap.session import account_id
from stalwart_tw.jmap.standard import (
    boolean_argument,
    check_arguments,
    method_arguments,
    optional_string,
    require_account,
    type_arguments,
)
from stalwart_tw.store.changes import (
    ChangesUnavailable,
    InvalidState,
    TooManyChanges,
    decode_state,
    encode_state,
)
from stalwart_tw.store.collation import COLLATIONS

# Method-level errors of /query and /queryChanges.
UNSUPPORTED_FILTER = "unsupportedFilter"
UNSUPPORTED_SORT = "unsupportedSort"
ANCHOR_NOT_FOUND = "anchorNotFound"
TOO_MANY_CHANGES = "tooManyChanges"

QUERY_ARGUMENTS = frozenset(
    {"accountId", "filter", "sort", "position", "anchor", "anchorOffset", "limit",
     "calculateTotal"}
)
QUERY_CHANGES_ARGUMENTS = frozenset(
    {"accountId", "filter", "sort", "sinceQueryState", "maxChanges", "upToId",
     "calculateTotal"}
)
COMPARATOR_MEMBERS = frozenset({"property", "isAscending", "collation"})
# Members of /query itself that a widely used client library (jmapc)
# writes into every Comparator; ignored there, so that it works.
_LEAKED_MEMBERS = frozenset({"position", "anchorOffset", "calculateTotal"})
FILTER_OPERATORS = frozenset({"AND", "OR", "NOT"})

# Deep enough for any filter a person builds; a bound so that a hostile one
# is refused rather than exhausting the stack.
MAX_FILTER_DEPTH = 16


class FilterValueError(ValueError):
    """
    Raised by a filter condition's builder when the value it was given has
    the wrong type; the message completes "filter property 'x' ...".
    """


@dataclass(frozen=True)
class QuerySpec:
    """
    What a type can be filtered and sorted by.

    @ivar filter_properties: FilterCondition property name -> a builder
        called once with the condition's value. It checks the value,
        raising L{FilterValueError} when its type is wrong, and returns the
        predicate C{predicate(object) -> bool}. Building before matching
        means a bad value is refused even when there is nothing to match.
    @ivar sort_properties: Comparator property name -> C{key(object)}: a
        string, a number, a boolean or C{None} (which sorts first in
        ascending order). Collations apply to string keys only.
    """

    filter_properties: dict = field(default_factory=dict)
    sort_properties: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SortWith:
    """
    A sort property whose Comparator carries members of its own (Email's
    C{hasKeyword} takes C{keyword}): in L{QuerySpec.sort_properties} in
    place of a key.

    @ivar members: the extra members, each required.
    @ivar build: C{build(comparator)} -> the key, given the Comparator
        object; raises L{FilterValueError} for a bad member value.
    """

    members: frozenset
    build: object


def _values(obj, name):
    value = obj.get(name)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def filter_string(value):
    """
    @return: C{value}, a FilterCondition's string.
    @raise FilterValueError: it is no string.
    """
    if not isinstance(value, str):
        raise FilterValueError(f"must be a string, not {value!r}")
    return value


def contains_text(*properties):
    """
    @return: a filter builder matching objects where the condition's string
        is a case-insensitive substring of any of C{properties} (a string
        property, or a list of strings).
    """

    def build(value):
        wanted = filter_string(value).casefold()
        return lambda obj: any(
            wanted in text.casefold() for name in properties for text in _values(obj, name)
        )

    return build


def equals(property_name):
    """
    @return: a filter builder matching objects whose C{property_name} is
        exactly the condition's string.
    """

    def build(value):
        wanted = filter_string(value)
        return lambda obj: obj.get(property_name) == wanted

    return build


def by_property(property_name):
    """
    @return: a sort key reading C{property_name} of an object.
    """
    return lambda obj: obj.get(property_name)


# Unicode-aware and case-insensitive, as RFC 8620 asks of the default.
DEFAULT_COLLATION = "i;unicode-casemap"


class PythonPredicates:
    """
    How compile_filter joins conditions for an in-memory query: into
    predicates C{predicate(object) -> bool}. A type that queries in SQL
    passes its own joiner (C{everything}, C{all}, C{any}, C{none}) and
    condition builders that return SQL clauses.
    """

    @staticmethod
    def everything():
        return lambda obj: True

    @staticmethod
    def all(parts):
        return lambda obj: all(part(obj) for part in parts)

    @staticmethod
    def any(parts):
        return lambda obj: any(part(obj) for part in parts)

    @staticmethod
    def none(parts):
        return lambda obj: not any(part(obj) for part in parts)


def compile_filter(spec, filter_value, join=PythonPredicates):
    """
    Check a /query C{filter} argument and build what it selects.

    @param join: how conditions are joined (L{PythonPredicates}: a
        predicate of objects; a SQL joiner: a clause).
    @return: the predicate (or clause) of the whole filter.
    @raise MethodError: C{invalidArguments} for a malformed filter;
        C{unsupportedFilter} for a condition property C{spec} lacks.
    """
    if filter_value is None:
        return join.everything()
    return _compile_filter(spec, filter_value, 0, join)


def _compile_filter(spec, node, depth, join):
    if not isinstance(node, dict):
        raise invalid_arguments(
            f"a filter must be a FilterOperator or FilterCondition object, not {node!r}"
        )
    if depth > MAX_FILTER_DEPTH:
        raise invalid_arguments(f"the filter is nested deeper than {MAX_FILTER_DEPTH}")
    if "operator" not in node:
        return _compile_condition(spec, node, join)
    operator, conditions = node["operator"], node.get("conditions")
    extra = sorted(set(node) - {"operator", "conditions"})
    if extra:
        raise invalid_arguments(f"a FilterOperator has no member {extra[0]!r}")
    if operator not in FILTER_OPERATORS:
        raise invalid_arguments(f"'operator' must be 'AND', 'OR' or 'NOT', not {operator!r}")
    if not isinstance(conditions, list):
        raise invalid_arguments("a FilterOperator's 'conditions' must be an array")
    parts = [_compile_filter(spec, condition, depth + 1, join) for condition in conditions]
    if operator == "AND":
        return join.all(parts)
    if operator == "OR":
        return join.any(parts)
    return join.none(parts)


def _compile_condition(spec, condition, join):
    parts = []
    for name, value in condition.items():
        build = spec.filter_properties.get(name)
        if build is None:
            raise MethodError(UNSUPPORTED_FILTER, f"cannot filter on {name!r}")
        try:
            parts.append(build(value))
        except FilterValueError as error:
            raise invalid_arguments(f"filter property {name!r} {error}") from None
    return join.all(parts)


@dataclass(frozen=True)
class _Comparator:
    key: object
    ascending: bool
    collate: object


def compile_sort(spec, sort_value):
    """
    Check a /query C{sort} argument.

    @return: the comparators, most significant first.
    @raise MethodError: C{invalidArguments} for a malformed sort;
        C{unsupportedSort} for a property C{spec} cannot sort by or an
        unknown collation.
    """
    if sort_value is None:
        return []
    if not isinstance(sort_value, list):
        raise invalid_arguments("'sort' must be null or an array of Comparators")
    return [_compile_comparator(spec, comparator) for comparator in sort_value]


def _compile_comparator(spec, comparator):
    if not isinstance(comparator, dict):
        raise invalid_arguments(f"a Comparator must be an object, not {comparator!r}")
    name = comparator.get("property")
    if not isinstance(name, str):
        raise invalid_arguments("a Comparator's 'property' must be a string")
    key = spec.sort_properties.get(name)
    members = key.members if isinstance(key, SortWith) else frozenset()
    extra = sorted(set(comparator) - COMPARATOR_MEMBERS - members - _LEAKED_MEMBERS)
    if extra:
        raise invalid_arguments(f"a Comparator has no member {extra[0]!r}")
    missing = sorted(members - set(comparator))
    if missing:
        raise invalid_arguments(f"a Comparator of {name!r} needs {missing[0]!r}")
    ascending = comparator.get("isAscending", True)
    if not isinstance(ascending, bool):
        raise invalid_arguments("a Comparator's 'isAscending' must be a boolean")
    collation = comparator.get("collation", DEFAULT_COLLATION)
    if not isinstance(collation, str):
        raise invalid_arguments("a Comparator's 'collation' must be a string")
    if key is None:
        raise MethodError(UNSUPPORTED_SORT, f"cannot sort by {name!r}")
    collate = COLLATIONS.get(collation)
    if collate is None:
        raise MethodError(UNSUPPORTED_SORT, f"no collation {collation!r}")
    if isinstance(key, SortWith):
        try:
            key = key.build(comparator)
        except FilterValueError as error:
            raise invalid_arguments(f"a Comparator of {name!r}: {error}") from None
    return _Comparator(key, ascending, collate)


def _sort_key(comparator):
    def key(obj):
        value = comparator.key(obj)
        if value is None:
            return (0,)
        if isinstance(value, str):
            value = comparator.collate(value)
        return (1, value)

    return key


def sorted_ids(objects, predicate, comparators):
    """
    @param objects: id -> object.
    @return: the ids of the objects C{predicate} accepts, ordered by
        C{comparators} and then by id, so that equal objects always come
        in the same order.
    """
    matching = sorted(object_id for object_id, obj in objects.items() if predicate(obj))
    # Stable sorts, least significant first; reverse=True keeps stability.
    for comparator in reversed(comparators):
        key = _sort_key(comparator)
        matching.sort(key=lambda object_id: key(objects[object_id]),
                      reverse=not comparator.ascending)
    return matching


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _int_argument(arguments, name, default, minimum=None):
    """
    @param default: the value when the argument is absent; when it is
        C{None} the argument is nullable (RFC 8620 says C{Int|null}), else
        null is refused like any other value that is not an integer.
    """
    if name not in arguments:
        return default
    value = arguments[name]
    if value is None and default is None:
        return None
    if not _is_int(value) or (minimum is not None and value < minimum):
        kind = "an integer" if minimum is None else f"an integer of at least {minimum}"
        raise invalid_arguments(f"{name!r} must be {kind}")
    return value


@dataclass(frozen=True)
class Window:
    """
    The part of a /query's results the client asked for.
    """

    position: int
    anchor: str
    anchor_offset: int
    limit: int

    def cut(self, ids):
        """
        @return: C{(start, ids of the window)} of the whole results.
        @raise MethodError: C{anchorNotFound}.
        """
        if self.anchor is not None:
            # With an anchor, position is ignored (RFC 8620 section 5.5).
            try:
                start = max(0, ids.index(self.anchor) + self.anchor_offset)
            except ValueError:
                raise MethodError(
                    ANCHOR_NOT_FOUND, f"{self.anchor!r} is not in the results") from None
        elif self.position < 0:
            start = max(0, len(ids) + self.position)
        else:
            start = self.position
        return start, ids[start:start + self.limit]


class QueryEngine(ABC):
    """
    Evaluates a type's queries.
    """

    async def run_window(self, context, account, compiled, extra, window):
        """
        Run a query for one window of its results. This reads them all
        and cuts; an engine that can count and cut in its database does
        so (Email's, when no anchor is given).

        @return: C{(modseq, start, ids of the window, total)}.
        """
        modseq, ids = await self.run(context, account, compiled, extra)
        start, cut = window.cut(ids)
        return modseq, start, cut, len(ids)

    @abstractmethod
    def compile(self, filter_value, sort_value):
        """
        Check a /query's C{filter} and C{sort} (either may be C{None}).

        @return: the compiled query, whatever L{run} takes.
        @raise MethodError: C{invalidArguments}, C{unsupportedFilter} or
            C{unsupportedSort}, saying what is wrong.
        """

    @abstractmethod
    async def run(self, context, account, compiled, extra):
        """
        @param extra: the checked type-specific arguments of the method.
        @return: C{(modseq, ids)}: every matching id in order, and the
            type's modseq as of the results (or older: the client then
            catches up later).
        """

    async def related_changes(self, context, account, compiled, extra, changed, since):
        """
        For /queryChanges: the ids whose place in the results may have
        moved, given the objects that changed. Most types answer exactly
        those; one whose results depend on other objects (Email collapsing
        threads: a new message displaces its thread's older one) adds the
        ids that depend on them.

        @param changed: the changed ids, a dict used as an ordered set.
        @param since: the state (a modseq) the client is at.
        @return: the ids, a dict used as an ordered set.
        """
        return changed


class InMemoryQuery(QueryEngine):
    """
    Every object read through C{datatype.read_with_state}, filtered and
    sorted here as a L{QuerySpec} says.
    """

    def __init__(self, datatype, spec):
        self._datatype = datatype
        self._spec = spec

    def compile(self, filter_value, sort_value):
        return compile_filter(self._spec, filter_value), compile_sort(self._spec, sort_value)

    async def run(self, context, account, compiled, extra):
        predicate, comparators = compiled
        modseq, objects = await self._datatype.read_with_state(
            context, account, None, None, extra
        )
        return modseq, sorted_ids(objects, predicate, comparators)


def _engine(datatype, query):
    return InMemoryQuery(datatype, query) if isinstance(query, QuerySpec) else query


async def standard_query(datatype, query, limits, context, arguments):
    """
    The /query method: the ids of the objects matching C{filter}, in
    C{sort} order, from C{position} (or C{anchor} + C{anchorOffset}), at
    most C{limit} of them and never more than the server's own limit.

    @param query: the type's L{QueryEngine}, or the L{QuerySpec} of an
        in-memory one.
    @param limits: has C{query_max_results} (the node's settings).
    """
    check_arguments(arguments, method_arguments(datatype, "query", QUERY_ARGUMENTS))
    account = require_account(context, arguments)
    position = _int_argument(arguments, "position", 0)
    anchor = optional_string(arguments, "anchor", "an id string")
    anchor_offset = _int_argument(arguments, "anchorOffset", 0)
    limit = _int_argument(arguments, "limit", None, minimum=0)
    calculate_total = boolean_argument(arguments, "calculateTotal")
    extra = type_arguments(datatype, "query", arguments)
    capped = limit is None or limit > limits.query_max_results
    if capped:
        limit = limits.query_max_results
    engine = _engine(datatype, query)
    compiled = engine.compile(arguments.get("filter"), arguments.get("sort"))
    window = Window(position, anchor, anchor_offset, limit)
    modseq, start, ids, total = await engine.run_window(context, account, compiled, extra, window)
    response = {
        "accountId": account_id(account),
        "queryState": encode_state(modseq),
        "canCalculateChanges": True,
        "position": start,
        "ids": ids,
    }
    if calculate_total:
        response["total"] = total
    if capped:
        response["limit"] = limit
    return response


async def standard_query_changes(datatype, query, limits, context, arguments):
    """
    The /queryChanges method: how the results of the query with this
    C{filter} and C{sort} moved since C{sinceQueryState}.

    @param query: as for L{standard_query}.
    @param limits: has C{changes_max_results} (the node's settings): the
        most changed objects the server will look through.
    """
    check_arguments(
        arguments, method_arguments(datatype, "queryChanges", QUERY_CHANGES_ARGUMENTS)
    )
    account = require_account(context, arguments)
    since_state = arguments.get("sinceQueryState")
    if not isinstance(since_state, str):
        raise invalid_arguments("'sinceQueryState' must be a state string")
    max_changes = _int_argument(arguments, "maxChanges", None, minimum=0)
    up_to_id = optional_string(arguments, "upToId", "an id string")
    calculate_total = boolean_argument(arguments, "calculateTotal")
    extra = type_arguments(datatype, "queryChanges", arguments)
    # The results are read before the changes, so that every change they
    # reflect is among the changes: each changed id is then removed and
    # added back exactly where the results have it.
    engine = _engine(datatype, query)
    compiled = engine.compile(arguments.get("filter"), arguments.get("sort"))
    modseq, ids = await engine.run(context, account, compiled, extra)
    changed = await _changed_ids(datatype, limits, context, account, since_state, max_changes)
    changed = await engine.related_changes(
        context, account, compiled, extra, changed, decode_state(since_state)
    )
    removed = list(changed)
    cut = ids.index(up_to_id) + 1 if up_to_id in ids else len(ids)
    added = [
        {"id": object_id, "index": index}
        for index, object_id in enumerate(ids[:cut])
        if object_id in changed
    ]
    if max_changes is not None and len(removed) + len(added) > max_changes:
        raise _too_many(len(removed) + len(added), max_changes)
    response = {
        "accountId": account_id(account),
        "oldQueryState": since_state,
        "newQueryState": encode_state(modseq),
    }
    if calculate_total:
        response["total"] = len(ids)
    response["removed"] = removed
    response["added"] = added
    return response


async def _changed_ids(datatype, limits, context, account, since_state, max_changes):
    """
    @return: every id created, updated or destroyed since C{since_state},
        as a dict used as an ordered set.
    """
    # Each changed id is at least one change (it is removed), so the log
    # need not be read past the client's maxChanges; nor ever past the
    # server's own limit.
    budget = limits.changes_max_results
    if max_changes is not None:
        budget = min(budget, max_changes)
    try:
        since = decode_state(since_state)
        changes = await datatype.changes(context, account, since, budget)
    except (InvalidState, ChangesUnavailable) as error:
        raise MethodError(CANNOT_CALCULATE_CHANGES, str(error)) from None
    except TooManyChanges:
        changes = None
    if changes is None or changes.has_more:
        # More than the budget changed.
        if max_changes is not None and budget == max_changes:
            raise _too_many(f"more than {budget}", max_changes)
        raise MethodError(
            CANNOT_CALCULATE_CHANGES, f"more than {budget} objects changed since {since_state!r}"
        )
    return dict.fromkeys([*changes.created, *changes.updated, *changes.destroyed])


def _too_many(count, max_changes):
    return MethodError(TOO_MANY_CHANGES, f"{count} changes; maxChanges is {max_changes}")
