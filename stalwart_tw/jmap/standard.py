"""
The standard methods shared by every data type (RFC 8620 section 5): /get
and /changes so far.

A data type describes itself with a L{DataType} (its name, properties, and
how to read its objects, its state and its changes); the functions here do
the rest the same way for every type: argument checking with precise
errors, the account check, limits, property selection, and the response
shape. A method handler is then one line:
C{lambda context, arguments: standard_get(principals, limits, context, arguments)}.
"""

from abc import ABC, abstractmethod

from stalwart_tw.jmap.errors import (
    ACCOUNT_NOT_FOUND,
    CANNOT_CALCULATE_CHANGES,
    REQUEST_TOO_LARGE,
    MethodError,
    invalid_arguments,
)
from stalwart_tw.jmap.session import account_id, account_number
from stalwart_tw.store.changes import (
    ChangesUnavailable,
    InvalidState,
    TooManyChanges,
    decode_state,
    encode_state,
)

GET_ARGUMENTS = frozenset({"accountId", "ids", "properties"})
CHANGES_ARGUMENTS = frozenset({"accountId", "sinceState", "maxChanges"})


class DataType(ABC):
    """
    What the standard methods need to know of a data type. Subclasses set
    C{name} and C{properties} and implement the reading methods.

    @cvar name: the type's name, as in C{"Principal"}.
    @cvar properties: every property a client may ask for (C{id} included).
    """

    name = None
    properties = frozenset()

    @abstractmethod
    async def read(self, context, account, ids):
        """
        @param ids: the ids wanted, or C{None} for every object.
        @return: id -> the object (a dict of every property) for those that
            exist and the caller may see.
        """

    @abstractmethod
    async def modseq(self, context, account):
        """
        @return: the modseq of the type's current state in the account.
        """

    @abstractmethod
    async def changes(self, context, account, since_modseq, max_changes):
        """
        @return: a L{stalwart_tw.store.changes.Changes}.
        """


def check_arguments(arguments, allowed):
    """
    @raise MethodError: C{invalidArguments} naming an argument the method
        does not take.
    """
    unknown = sorted(set(arguments) - allowed)
    if unknown:
        raise invalid_arguments(f"unknown argument {unknown[0]!r}")


def require_account(context, arguments):
    """
    @return: the principal id of the account named by C{accountId}.
    @raise MethodError: C{invalidArguments} when it is missing or not a
        string; C{accountNotFound} when the caller has no such account (an
        account that exists but is not the caller's looks the same).
    """
    value = arguments.get("accountId")
    if not isinstance(value, str):
        raise invalid_arguments("'accountId' must be an account id string")
    number = account_number(value)
    if number is None or number not in context.accounts:
        raise MethodError(ACCOUNT_NOT_FOUND, f"no account {value!r}")
    return number


def _string_list(arguments, name):
    value = arguments.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalid_arguments(f"{name!r} must be null or an array of strings")
    return value


def _unique(values):
    return list(dict.fromkeys(values))


async def standard_get(datatype, max_objects, context, arguments):
    """
    The /get method: the objects named by C{ids} (all when null), with the
    C{properties} asked for (all when null; C{id} always).
    """
    check_arguments(arguments, GET_ARGUMENTS)
    account = require_account(context, arguments)
    ids = _string_list(arguments, "ids")
    properties = _string_list(arguments, "properties")
    if properties is not None:
        unknown = sorted(set(properties) - datatype.properties)
        if unknown:
            raise invalid_arguments(f"{datatype.name} has no property {unknown[0]!r}")
    if ids is not None:
        ids = _unique(ids)
        if len(ids) > max_objects:
            raise _too_large(len(ids), max_objects)
    modseq = await datatype.modseq(context, account)
    found = await datatype.read(context, account, ids)
    if ids is None:
        if len(found) > max_objects:
            raise _too_large(len(found), max_objects)
        ids = sorted(found)
    wanted = datatype.properties if properties is None else {"id", *properties}
    return {
        "accountId": account_id(account),
        "state": encode_state(modseq),
        "list": [
            {name: value for name, value in found[object_id].items() if name in wanted}
            for object_id in ids
            if object_id in found
        ],
        "notFound": [object_id for object_id in ids if object_id not in found],
    }


def _too_large(count, limit):
    return MethodError(
        REQUEST_TOO_LARGE, f"{count} objects asked for; at most {limit} in one /get"
    )


async def standard_changes(datatype, max_changes_limit, context, arguments):
    """
    The /changes method: what was created, updated and destroyed since
    C{sinceState}, at most C{maxChanges} ids (and never more than the
    server's own limit), stopping at a state boundary with
    C{hasMoreChanges} when there are more.
    """
    check_arguments(arguments, CHANGES_ARGUMENTS)
    account = require_account(context, arguments)
    since_state = arguments.get("sinceState")
    if not isinstance(since_state, str):
        raise invalid_arguments("'sinceState' must be a state string")
    max_changes = arguments.get("maxChanges")
    if max_changes is not None and (
        not isinstance(max_changes, int) or isinstance(max_changes, bool) or max_changes < 1
    ):
        raise invalid_arguments("'maxChanges' must be null or a positive integer")
    limit = max_changes_limit if max_changes is None else min(max_changes, max_changes_limit)
    try:
        since = decode_state(since_state)
        changes = await datatype.changes(context, account, since, limit)
    except (InvalidState, ChangesUnavailable, TooManyChanges) as error:
        raise MethodError(CANNOT_CALCULATE_CHANGES, str(error)) from None
    return {
        "accountId": account_id(account),
        "oldState": since_state,
        "newState": encode_state(changes.new_modseq),
        "hasMoreChanges": changes.has_more,
        "created": changes.created,
        "updated": changes.updated,
        "destroyed": changes.destroyed,
    }
