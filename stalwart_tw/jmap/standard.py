"""
The standard methods shared by every data type (RFC 8620 section 5): /get,
/changes, /set and /copy (/query and /queryChanges are in query.py).

A data type describes itself with a L{DataType} (its name, properties, and
how to read its objects, its state and its changes); the functions here do
the rest the same way for every type: argument checking with precise
errors, the account check, limits, property selection, and the response
shape. A method handler is then one line:
C{lambda context, arguments: standard_get(principals, limits, context, arguments)}.
"""

from abc import ABC, abstractmethod
from contextlib import asynccontextmanager

from twisted.internet.defer import CancelledError

from stalwart_tw.jmap.errors import (
    ACCOUNT_NOT_FOUND,
    ACCOUNT_NOT_SUPPORTED_BY_METHOD,
    ACCOUNT_READ_ONLY,
    CANNOT_CALCULATE_CHANGES,
    FROM_ACCOUNT_NOT_FOUND,
    FROM_ACCOUNT_NOT_SUPPORTED_BY_METHOD,
    REQUEST_TOO_LARGE,
    SERVER_PARTIAL_FAIL,
    STATE_MISMATCH,
    MethodError,
    invalid_arguments,
)
from stalwart_tw.jmap.session import account_id, account_number
from stalwart_tw.logs import Logger
from stalwart_tw.store.changes import (
    ChangesUnavailable,
    InvalidState,
    TooManyChanges,
    decode_state,
    encode_state,
)
from stalwart_tw.store.errors import StateChanged

log = Logger()

GET_ARGUMENTS = frozenset({"accountId", "ids", "properties"})
CHANGES_ARGUMENTS = frozenset({"accountId", "sinceState", "maxChanges"})


class DataType(ABC):
    """
    What the standard methods need to know of a data type. Subclasses set
    C{name} and C{properties} and implement the reading methods.

    @cvar name: the type's name, as in C{"Principal"}.
    @cvar properties: every property a client may ask for (C{id} included).
    @cvar server_set: properties the server sets, which a copy does not
        take from its original.
    """

    name = None
    properties = frozenset()
    server_set = frozenset({"id"})

    def supports_account(self, account):
        """
        @return: whether the account (a principal id) holds objects of
            this type; one that does not is C{accountNotSupportedByMethod}.
        """
        return True

    @abstractmethod
    async def read(self, context, account, ids):
        """
        @param ids: the ids wanted, or C{None} for every object.
        @return: id -> the object (a dict of every property) for those that
            exist and the caller may see.
        """

    async def read_with_state(self, context, account, ids):
        """
        @return: C{(modseq, objects)} as L{read} and L{modseq} give them; a
            type that can read both at once, consistently, overrides this.
        """
        return await self.modseq(context, account), await self.read(context, account, ids)

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


def require_account(context, arguments, name="accountId", not_found=ACCOUNT_NOT_FOUND):
    """
    @return: the principal id of the account named by C{accountId}.
    @raise MethodError: C{invalidArguments} when it is missing or not a
        string; C{accountNotFound} when the caller has no such account (an
        account that exists but is not the caller's looks the same).
    """
    value = arguments.get(name)
    if not isinstance(value, str):
        raise invalid_arguments(f"{name!r} must be an account id string")
    number = account_number(value)
    if number is None or number not in context.accounts:
        raise MethodError(not_found, f"no account {value!r}")
    return number


def optional_string(arguments, name, what):
    """
    @return: the argument C{name}: a string, or C{None} when absent or null.
    @raise MethodError: C{invalidArguments}, saying it must be C{what}.
    """
    value = arguments.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid_arguments(f"{name!r} must be null or {what}")
    return value


def boolean_argument(arguments, name):
    """
    @return: the boolean argument C{name}, false when absent.
    @raise MethodError: C{invalidArguments} for anything but a boolean.
    """
    value = arguments.get(name, False)
    if not isinstance(value, bool):
        raise invalid_arguments(f"{name!r} must be a boolean")
    return value


def require_writable(context, account):
    """
    @raise MethodError: C{accountReadOnly} for an account the caller may
        only read.
    """
    if account in context.read_only:
        raise MethodError(ACCOUNT_READ_ONLY, f"the account {account_id(account)!r} is read-only")


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
    modseq, found = await datatype.read_with_state(context, account, ids)
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


SET_ARGUMENTS = frozenset({"accountId", "ifInState", "create", "update", "destroy"})


class SetError(Exception):
    """
    One create, update or destroy of a /set failed; the others go on.

    @ivar type: the SetError type (C{invalidProperties}, C{notFound}...).
    @ivar properties: for C{invalidProperties}, the properties at fault.
    """

    def __init__(self, type, description=None, properties=None):
        super().__init__(description or type)
        self.type = type
        self.description = description
        self.properties = properties

    def as_json(self):
        error = {"type": self.type}
        if self.description is not None:
            error["description"] = self.description
        if self.properties is not None:
            error["properties"] = list(self.properties)
        return error


class StateGuard:
    """
    ifInState kept true up to the first write of a /set: until one of its
    writes has committed, each is made on condition that the type is still
    at C{modseq} (a write that finds it moved raises L{StateChanged} and
    applies nothing); after that, the /set has started in the state the
    client gave, and the rest are plain writes.

    @ivar modseq: the modseq a write must find, or C{None}: no condition.
    @ivar writes: how many writes of the method have committed.
    """

    def __init__(self, modseq=None):
        self.modseq = modseq
        self.writes = 0

    def passed(self):
        """
        A write has committed: the condition is met.
        """
        self.modseq = None
        self.writes += 1


@asynccontextmanager
async def _partial_failure(name, guard):
    # A failure nobody foresaw after some writes committed: the client has
    # to be told that part of the method happened (serverPartialFail), not
    # that none did (serverFail).
    try:
        yield
    except (MethodError, SetError, StateChanged, CancelledError):
        raise
    except Exception:
        if not guard.writes:
            raise
        log.failure("{name} failed after {writes} writes", name=name, writes=guard.writes)
        raise MethodError(
            SERVER_PARTIAL_FAIL,
            f"{name} failed after some of its changes were made; fetch the changes since",
        ) from None


class WritableType(DataType):
    """
    A data type with /set. Its methods raise L{SetError} for a refused
    object; each call is one atomic change, made on the condition of the
    L{StateGuard} it is given (and calling its C{passed} once committed).
    """

    @abstractmethod
    async def create(self, context, account, properties, guard):
        """
        @return: the new object's server-set properties, C{id} included.
        """

    @abstractmethod
    async def update(self, context, account, object_id, current, patched, guard):
        """
        @param current: the object before, as /get shows it.
        @param patched: the object with the client's patch applied.
        @return: server-set properties that changed, or C{None}.
        """

    @abstractmethod
    async def destroy(self, context, account, object_id, guard):
        """
        Destroy one object.
        """


def apply_patch(current, patch):
    """
    Apply a PatchObject (RFC 8620 section 5.3) to a copy of C{current}.

    @raise SetError: C{invalidPatch} for a pointer into an array, through a
        missing member, or overlapping another pointer of the patch.
    """
    if not isinstance(patch, dict):
        raise SetError("invalidPatch", "a patch must be an object")
    for path in patch:
        parts = path.split("/")
        for end in range(1, len(parts)):
            prefix = "/".join(parts[:end])
            if prefix in patch:
                raise SetError("invalidPatch", f"{prefix!r} and {path!r} overlap")
    patched = _copy(current)
    for path, value in patch.items():
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")]
        parent = patched
        for token in tokens[:-1]:
            if not isinstance(parent, dict) or not isinstance(parent.get(token), dict):
                raise SetError("invalidPatch", f"{path!r} goes through something that is no object")
            parent = parent[token]
        if not isinstance(parent, dict):
            raise SetError("invalidPatch", f"{path!r} points inside an array")
        if value is None:
            parent.pop(tokens[-1], None)
        else:
            parent[tokens[-1]] = value
    return patched


def _copy(value):
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def resolve_id(context, value):
    """
    @return: the id a C{#creationId} reference stands for, or C{value}.
    @raise SetError: C{notFound} for a creation id not created in this request.
    """
    if isinstance(value, str) and value.startswith("#"):
        real = context.created_ids.get(value[1:])
        if real is None:
            raise SetError("notFound", f"no object was created as {value[1:]!r}")
        return real
    return value


def _map_or_null(arguments, name, value_check, what):
    value = arguments.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(value_check(v) for v in value.values()):
        raise invalid_arguments(f"{name!r} must be null or a map of ids to {what}")
    return value


async def standard_set(datatype, max_objects, context, arguments):
    """
    The /set method: creates, then updates, then destroys, each object on
    its own, refused ones reported as SetErrors.
    """
    check_arguments(arguments, SET_ARGUMENTS)
    account = require_account(context, arguments)
    require_writable(context, account)
    creates = _map_or_null(arguments, "create", lambda v: isinstance(v, dict), "objects")
    updates = _map_or_null(arguments, "update", lambda v: isinstance(v, dict), "patches")
    destroys = arguments.get("destroy")
    if destroys is None:
        destroys = []
    elif not isinstance(destroys, list) or not all(isinstance(i, str) for i in destroys):
        raise invalid_arguments("'destroy' must be null or an array of ids")
    count = len(creates) + len(updates) + len(destroys)
    if count > max_objects:
        raise MethodError(REQUEST_TOO_LARGE, f"{count} changes; at most {max_objects} per /set")
    if_in_state = optional_string(arguments, "ifInState", "a state string")
    old_modseq = await datatype.modseq(context, account)
    old_state = encode_state(old_modseq)
    if if_in_state is not None and if_in_state != old_state:
        raise _state_mismatch()
    guard = StateGuard(old_modseq if if_in_state is not None else None)
    response = {"accountId": account_id(account), "oldState": old_state}
    destroying = {_maybe_resolved(context, object_id) for object_id in destroys}
    try:
        async with _partial_failure(f"{datatype.name}/set", guard):
            response.update(await _set_creates(datatype, context, account, creates, guard))
            response.update(
                await _set_updates(datatype, context, account, updates, destroying, guard)
            )
            response.update(await _set_destroys(datatype, context, account, destroys, guard))
    except StateChanged:
        # Only a write made before any other of this /set committed is
        # conditional: nothing of the method has been applied.
        raise _state_mismatch() from None
    response["newState"] = encode_state(await datatype.modseq(context, account))
    return response


def _state_mismatch():
    return MethodError(STATE_MISMATCH, "the state is no longer the one given in ifInState")


def _maybe_resolved(context, object_id):
    try:
        return resolve_id(context, object_id)
    except SetError:
        return object_id


async def _set_creates(datatype, context, account, creates, guard):
    created, refused = {}, {}
    for creation_id, properties in creates.items():
        try:
            created[creation_id] = await datatype.create(context, account, properties, guard)
        except SetError as error:
            refused[creation_id] = error.as_json()
        else:
            context.created_ids[creation_id] = created[creation_id]["id"]
    return {"created": created or None, "notCreated": refused or None}


async def _set_updates(datatype, context, account, updates, destroying, guard):
    updated, refused = {}, {}
    for given_id, patch in updates.items():
        try:
            object_id = resolve_id(context, given_id)
            if object_id in destroying:
                raise SetError("willDestroy", "the same request destroys it")
            current = (await datatype.read(context, account, [object_id])).get(object_id)
            if current is None:
                raise SetError("notFound", f"no {datatype.name} {object_id!r}")
            patched = apply_patch(current, patch)
            updated[object_id] = await datatype.update(
                context, account, object_id, current, patched, guard
            )
        except SetError as error:
            refused[given_id] = error.as_json()
    return {"updated": updated or None, "notUpdated": refused or None}


async def _set_destroys(datatype, context, account, destroys, guard):
    destroyed, refused = [], {}
    for given_id in destroys:
        try:
            object_id = resolve_id(context, given_id)
            if not (await datatype.read(context, account, [object_id])):
                raise SetError("notFound", f"no {datatype.name} {object_id!r}")
            await datatype.destroy(context, account, object_id, guard)
            destroyed.append(object_id)
        except SetError as error:
            refused[given_id] = error.as_json()
    return {"destroyed": destroyed or None, "notDestroyed": refused or None}


COPY_ARGUMENTS = frozenset(
    {"fromAccountId", "ifFromInState", "accountId", "ifInState", "create",
     "onSuccessDestroyOriginal", "destroyFromIfInState"}
)


async def standard_copy(datatype, max_objects, context, arguments):
    """
    The /copy method (RFC 8620 section 5.4): each record copied on its own
    into another account (the original's properties, with the client's
    in their place), then, if asked, the originals of those copied
    destroyed by one implicit /set in the account they came from.

    @return: the /copy response arguments, or with C{onSuccessDestroyOriginal}
        a list of C{(method name, arguments)}: the /copy response, then the
        implicit /set's (or its error).
    """
    check_arguments(arguments, COPY_ARGUMENTS)
    target = require_account(context, arguments)
    source = require_account(context, arguments, "fromAccountId", FROM_ACCOUNT_NOT_FOUND)
    if source == target:
        raise invalid_arguments("'fromAccountId' and 'accountId' must be different accounts")
    require_writable(context, target)
    if not datatype.supports_account(source):
        raise MethodError(FROM_ACCOUNT_NOT_SUPPORTED_BY_METHOD, f"no {datatype.name} there")
    if not datatype.supports_account(target):
        raise MethodError(ACCOUNT_NOT_SUPPORTED_BY_METHOD, f"no {datatype.name} there")
    creates = _map_or_null(
        arguments, "create", lambda v: isinstance(v, dict) and isinstance(v.get("id"), str),
        "objects naming the id to copy",
    )
    if len(creates) > max_objects:
        raise MethodError(
            REQUEST_TOO_LARGE, f"{len(creates)} copies; at most {max_objects} per /copy"
        )
    destroy_original = boolean_argument(arguments, "onSuccessDestroyOriginal")
    if_from_in_state, if_in_state, destroy_from_if_in_state = (
        optional_string(arguments, name, "a state string")
        for name in ("ifFromInState", "ifInState", "destroyFromIfInState")
    )
    from_modseq, originals = await datatype.read_with_state(
        context, source, sorted({given["id"] for given in creates.values()})
    )
    if if_from_in_state is not None and if_from_in_state != encode_state(from_modseq):
        raise _state_mismatch()
    old_modseq = await datatype.modseq(context, target)
    if if_in_state is not None and if_in_state != encode_state(old_modseq):
        raise _state_mismatch()
    guard = StateGuard(old_modseq if if_in_state is not None else None)
    try:
        async with _partial_failure(f"{datatype.name}/copy", guard):
            created, refused, copied = await _copy_each(
                datatype, context, target, creates, originals, guard
            )
    except StateChanged:
        raise _state_mismatch() from None
    response = {
        "fromAccountId": account_id(source),
        "accountId": account_id(target),
        "oldState": encode_state(old_modseq),
        "newState": encode_state(await datatype.modseq(context, target)),
        "created": created or None,
        "notCreated": refused or None,
    }
    if not destroy_original:
        return response
    responses = [(f"{datatype.name}/copy", response)]
    set_arguments = {
        "accountId": account_id(source), "ifInState": destroy_from_if_in_state, "destroy": copied,
    }
    try:
        responses.append(
            (f"{datatype.name}/set", await standard_set(datatype, max_objects, context, set_arguments))
        )
    except MethodError as error:
        responses.append(("error", error.arguments()))
    return responses




async def _copy_each(datatype, context, target, creates, originals, guard):
    created, refused, copied = {}, {}, []
    for creation_id, given in creates.items():
        try:
            original = originals.get(given["id"])
            if original is None:
                raise SetError("notFound", f"no {datatype.name} {given['id']!r} to copy")
            properties = {
                name: value for name, value in original.items()
                if name not in datatype.server_set
            }
            properties.update((name, value) for name, value in given.items() if name != "id")
            created[creation_id] = await datatype.create(context, target, properties, guard)
        except SetError as error:
            refused[creation_id] = error.as_json()
        else:
            context.created_ids[creation_id] = created[creation_id]["id"]
            copied.append(given["id"])
    return created, refused, copied
