"""
The standard methods shared by every data type (RFC 8620 section 5): /get,
/changes, /set and /copy (/query and /queryChanges are in query.py).

A data type describes itself with a L{DataType} (its name, properties, the
arguments it adds to the standard ones, and how to read its objects, its
state and its changes); the functions here do the rest the same way for
every type: argument checking with precise errors, the account check,
limits, property selection, and the response shape.

Writing. A /set (and a /copy) is one write: every create, update and
destroy of the call is built into one L{WriteBatch} by the type's
C{build_*} hooks, on a reader thread, inside the one read transaction of
the L{AccountWriter}, through a L{Draft} that shows each object the ones
built before it; an object that fails its checks leaves nothing in the
batch (a batch savepoint) and is reported in C{notCreated},
C{notUpdated} or C{notDestroyed}. The batch commits once. So C{ifInState}
holds for the whole call: it is checked in the transaction the batch is
built from, and the batch expects the account's modseq as read there. A
call is all or nothing on the server: an unforeseen failure commits
nothing (C{serverFail}).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from stalwart_tw.jmap.errors import (
    ACCOUNT_NOT_FOUND,
    ACCOUNT_NOT_SUPPORTED_BY_METHOD,
    ACCOUNT_READ_ONLY,
    CANNOT_CALCULATE_CHANGES,
    FROM_ACCOUNT_NOT_FOUND,
    FROM_ACCOUNT_NOT_SUPPORTED_BY_METHOD,
    REQUEST_TOO_LARGE,
    STATE_MISMATCH,
    MethodError,
    invalid_arguments,
)
from stalwart_tw.jmap.session import account_id, account_number
from stalwart_tw.store.changes import (
    ChangesUnavailable,
    InvalidState,
    TooManyChanges,
    account_modseq,
    decode_point,
    encode_state,
    type_modseq,
)
from stalwart_tw.store.draft import Draft

GET_ARGUMENTS = frozenset({"accountId", "ids", "properties"})
CHANGES_ARGUMENTS = frozenset({"accountId", "sinceState", "maxChanges"})
SET_ARGUMENTS = frozenset({"accountId", "ifInState", "create", "update", "destroy"})
COPY_ARGUMENTS = frozenset(
    {"fromAccountId", "ifFromInState", "accountId", "ifInState", "create",
     "onSuccessDestroyOriginal", "destroyFromIfInState"}
)


class DataType(ABC):
    """
    What the standard methods need to know of a data type. Subclasses set
    C{name} and C{properties} and implement the reading methods.

    @cvar name: the type's name, as in C{"Principal"}: its name in method
        names and in the change log.
    @cvar properties: every property a client may ask for (C{id} included).
    @cvar default_properties: what a /get without C{properties} returns,
        or C{None} for every property.
    @cvar server_set: properties the server sets, which a copy does not
        take from its original.
    @cvar arguments: method (C{"get"}, C{"changes"}, C{"set"}, C{"copy"},
        C{"query"}, C{"queryChanges"}) -> argument name -> C{check(value)},
        the arguments the type adds to the standard ones. A check returns
        the value to use, or raises C{ValueError} with a message that
        completes "'name' ..." (it becomes C{invalidArguments}); the checked
        values of the arguments given reach the type's hooks as C{extra}.
    """

    name = None
    properties = frozenset()
    default_properties = None
    server_set = frozenset({"id"})
    arguments = {}

    def check_properties(self, properties):
        """
        Check the C{properties} argument of a /get.

        @raise MethodError: C{invalidArguments} naming one the type lacks.
        """
        unknown = sorted(set(properties) - self.properties)
        if unknown:
            raise invalid_arguments(f"{self.name} has no property {unknown[0]!r}")

    def state_account(self, account):
        """
        @return: the account (a principal id) whose change log holds this
            type's state for C{account}: that account itself, unless the
            type is kept once for everyone (principals: the directory's).
        """
        return account

    def supports_account(self, account):
        """
        @return: whether the account (a principal id) holds objects of
            this type; one that does not is C{accountNotSupportedByMethod}.
        """
        return True

    @abstractmethod
    async def read(self, context, account, ids, properties=None, extra=None):
        """
        @param ids: the ids wanted, or C{None} for every object.
        @param properties: the properties the caller wants (C{id} among
            them), or C{None} for all: a type may skip the work of others.
        @param extra: the checked type-specific arguments of the method.
        @return: id -> the object (a dict of at least the wanted
            properties) for those that exist and the caller may see.
        """

    async def read_with_state(self, context, account, ids, properties=None, extra=None):
        """
        @return: C{(modseq, objects)} as L{read} and L{modseq} give them; a
            type that can read both at once, consistently, overrides this.
        """
        modseq = await self.modseq(context, account)
        return modseq, await self.read(context, account, ids, properties, extra)

    @abstractmethod
    async def modseq(self, context, account):
        """
        @return: the modseq of the type's current state in the account.
        """

    @abstractmethod
    async def changes(self, context, account, since, max_changes, extra=None):
        """
        @param since: the L{ChangePoint} (or the modseq) the client is at.
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


def check_boolean(value):
    """
    A check of L{DataType.arguments}: the value must be a boolean.
    """
    if not isinstance(value, bool):
        raise ValueError("must be a boolean")
    return value


def check_whole_number(value):
    """
    A check of L{DataType.arguments}: the value must be an integer >= 0.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("must be a whole number")
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


def type_arguments(datatype, method, arguments):
    """
    @return: the checked values of the type-specific arguments of C{method}
        that C{arguments} gives.
    @raise MethodError: C{invalidArguments} naming a value a check refused.
    """
    checks = datatype.arguments.get(method)
    if not checks:
        return {}
    extra = {}
    for name, check in checks.items():
        if name in arguments:
            try:
                extra[name] = check(arguments[name])
            except ValueError as error:
                raise invalid_arguments(f"{name!r} {error}") from None
    return extra


def method_arguments(datatype, method, standard):
    """
    @return: the arguments C{method} of C{datatype} takes: the standard
        ones and the type's own.
    """
    return standard | frozenset(datatype.arguments.get(method, ()))


async def standard_get(datatype, max_objects, context, arguments):
    """
    The /get method: the objects named by C{ids} (all when null), with the
    C{properties} asked for (all when null; C{id} always).
    """
    check_arguments(arguments, method_arguments(datatype, "get", GET_ARGUMENTS))
    account = require_account(context, arguments)
    ids = _string_list(arguments, "ids")
    properties = _string_list(arguments, "properties")
    if properties is not None:
        datatype.check_properties(properties)
    elif datatype.default_properties is not None:
        properties = list(datatype.default_properties)
    extra = type_arguments(datatype, "get", arguments)
    if ids is not None:
        ids = _unique(ids)
        if len(ids) > max_objects:
            raise _too_large(len(ids), max_objects)
    wanted = datatype.properties if properties is None else frozenset({"id", *properties})
    modseq, found = await datatype.read_with_state(
        context, account, ids, None if properties is None else wanted, extra
    )
    if ids is None:
        if len(found) > max_objects:
            raise _too_large(len(found), max_objects)
        ids = sorted(found)
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
    check_arguments(arguments, method_arguments(datatype, "changes", CHANGES_ARGUMENTS))
    account = require_account(context, arguments)
    since_state = arguments.get("sinceState")
    if not isinstance(since_state, str):
        raise invalid_arguments("'sinceState' must be a state string")
    max_changes = arguments.get("maxChanges")
    if max_changes is not None and (
        not isinstance(max_changes, int) or isinstance(max_changes, bool) or max_changes < 1
    ):
        raise invalid_arguments("'maxChanges' must be null or a positive integer")
    extra = type_arguments(datatype, "changes", arguments)
    limit = max_changes_limit if max_changes is None else min(max_changes, max_changes_limit)
    try:
        since = decode_point(since_state)
        changes = await datatype.changes(context, account, since, limit, extra)
    except (InvalidState, ChangesUnavailable, TooManyChanges) as error:
        raise MethodError(CANNOT_CALCULATE_CHANGES, str(error)) from None
    return {
        "accountId": account_id(account),
        "oldState": since_state,
        "newState": encode_state(changes.new_modseq, changes.new_skip),
        "hasMoreChanges": changes.has_more,
        "created": changes.created,
        "updated": changes.updated,
        "destroyed": changes.destroyed,
    }


class SetError(Exception):
    """
    One create, update or destroy of a /set failed; the others go on.

    @ivar type: the SetError type (C{invalidProperties}, C{notFound}...).
    @ivar properties: for C{invalidProperties}, the properties at fault.
    @ivar extra: other members a type's error carries (C{blobNotFound}'s
        C{notFound}, C{alreadyExists}'s C{existingId}).
    """

    def __init__(self, type, description=None, properties=None, extra=None):
        super().__init__(description or type)
        self.type = type
        self.description = description
        self.properties = properties
        self.extra = extra or {}

    def as_json(self):
        error = {"type": self.type, **self.extra}
        if self.description is not None:
            error["description"] = self.description
        if self.properties is not None:
            error["properties"] = list(self.properties)
        return error


@dataclass
class SetCall:
    """
    What a type's build hooks know of the /set (or /copy) they build.

    @ivar context: the L{CallContext} of the request.
    @ivar account: the account (a principal id) written.
    @ivar extra: the checked type-specific arguments.
    @ivar prepared: what the type's C{prepare} returned.
    @ivar created_ids: creation id -> id for the objects this call created
        so far (the request's earlier ones are in C{context}).
    @ivar key: the key, in the client's arguments, of the object being
        built: its creation id, or the id (maybe C{#creationId}) it gave
        for an update or a destroy; what C{prepared} may be keyed by.
    @ivar copy_of: in a /copy, C{(source account, original)} of the object
        being created (the original as C{read_drafted} shows it).
    """

    context: object
    account: int
    extra: dict = field(default_factory=dict)
    prepared: object = None
    created_ids: dict = field(default_factory=dict)
    key: str = None
    copy_of: object = None

    def resolve_id(self, value):
        """
        @return: the id a C{#creationId} reference stands for, or C{value}.
        @raise SetError: C{notFound} for a creation id not created in this
            request (or not yet).
        """
        if isinstance(value, str) and value.startswith("#"):
            real = self.created_ids.get(value[1:]) or self.context.created_ids.get(value[1:])
            if real is None:
                raise SetError("notFound", f"no object was created as {value[1:]!r}")
            return real
        return value


@dataclass(frozen=True)
class SetRequest:
    """
    The objects a /set asks for, arguments checked for shape.

    @ivar create: creation id -> properties.
    @ivar update: id (or C{#creationId}) -> PatchObject.
    @ivar destroy: ids (or C{#creationId}s).
    """

    create: dict
    update: dict
    destroy: list


class WritableType(DataType):
    """
    A data type with /set (and /copy). The C{build_*} hooks run on a reader
    thread, inside the write's read transaction: they read through the
    L{Draft} (which shows what the call built so far), write into
    C{draft.batch} with change-log records for what they touch, decide
    every id and date themselves, and raise L{SetError} to refuse one
    object (what they added to the batch is then dropped). Any other
    exception fails the whole call, with nothing committed.

    The batch expects the modseq of the account it writes (the type's
    C{state_account}) as of the read, and nothing else: so every row a hook
    reads and then changes must belong to that account (an id sequence per
    account, not one for the whole server), or a write of another account
    could slip in between unseen.
    """

    async def prepare(self, context, account, request, extra):
        """
        Work done on the reactor before building: hashing secrets, storing
        blobs. Nothing read here may be trusted to still hold when building.

        @param request: the L{SetRequest} (for /copy: the creates only).
        @return: the value the build hooks find in C{call.prepared}.
        """
        return None

    def normalise_patch(self, patch):
        """
        @return: the client's PatchObject as it applies to the object as
            /get shows it (Email's keywords are case-insensitive and shown
            lower-case: "keywords/$Seen" patches "keywords/$seen").
        """
        return patch

    def release(self, prepared):
        """
        Called once the write is over, committed or not: let go of what
        C{prepare} held (blobs kept in flight for the batch).
        """

    def modseq_in(self, connection, account):
        """
        @return: the type's modseq in C{account}, read through C{connection}
            (the write's transaction).
        """
        return type_modseq(connection, self.state_account(account), self.name)

    @abstractmethod
    def read_drafted(self, draft, call, account, ids):
        """
        @return: id -> the object, as /get shows it, for those of C{ids}
            that exist in C{account} (as the batch so far leaves them) and
            the caller may see.
        """

    @abstractmethod
    def build_create(self, draft, call, creation_id, properties):
        """
        @return: the new object's server-set properties, C{id} included.
        """

    @abstractmethod
    def build_update(self, draft, call, object_id, current, patched):
        """
        @param current: the object before, as /get shows it.
        @param patched: the object with the client's patch applied.
        @return: server-set properties that changed, or C{None}.
        """

    @abstractmethod
    def build_destroy(self, draft, call, object_id, current):
        """
        Destroy one object (C{current} is it, as /get shows it).
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


def _resolve_quietly(call, object_id):
    try:
        return call.resolve_id(object_id)
    except SetError:
        return object_id


def _map_or_null(arguments, name, value_check, what):
    value = arguments.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(value_check(v) for v in value.values()):
        raise invalid_arguments(f"{name!r} must be null or a map of ids to {what}")
    return value


def _set_request(arguments, max_objects):
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
    return SetRequest(creates, updates, destroys)


@dataclass
class _SetOutcome:
    # What building a /set decided; the response once it has committed.
    old_modseq: int
    created_ids: dict
    response: dict


async def standard_set(datatype, writer, max_objects, context, arguments):
    """
    The /set method: creates, then updates, then destroys, each object on
    its own (refused ones reported as SetErrors), all committed as one
    batch through C{writer}.
    """
    check_arguments(arguments, method_arguments(datatype, "set", SET_ARGUMENTS))
    account = require_account(context, arguments)
    require_writable(context, account)
    request = _set_request(arguments, max_objects)
    if_in_state = optional_string(arguments, "ifInState", "a state string")
    extra = type_arguments(datatype, "set", arguments)
    prepared = await datatype.prepare(context, account, request, extra)
    call = SetCall(context, account, extra, prepared)
    state_account = datatype.state_account(account)
    try:
        written = await writer.write(
            state_account, _build_set, datatype, call, request, if_in_state
        )
    finally:
        datatype.release(prepared)
    outcome = written.outcome
    context.created_ids.update(outcome.created_ids)
    new_modseq = written.type_modseq(state_account, datatype.name, outcome.old_modseq)
    return {
        "accountId": account_id(account),
        "oldState": encode_state(outcome.old_modseq),
        "newState": encode_state(new_modseq),
        **outcome.response,
    }


def _build_set(connection, batch, datatype, call, request, if_in_state):
    # On a reader thread; a rebuild after a conflict starts from scratch.
    call.created_ids = {}
    old_modseq = datatype.modseq_in(connection, call.account)
    if if_in_state is not None and if_in_state != encode_state(old_modseq):
        raise _state_mismatch()
    draft = Draft(connection, batch)
    response = _build_creates(datatype, draft, call, request.create)
    destroying = {_resolve_quietly(call, object_id) for object_id in request.destroy}
    response.update(_build_updates(datatype, draft, call, request.update, destroying))
    response.update(_build_destroys(datatype, draft, call, request.destroy))
    return _SetOutcome(old_modseq, dict(call.created_ids), response)


def _state_mismatch():
    return MethodError(STATE_MISMATCH, "the state is no longer the one given in ifInState")


def _build_creates(datatype, draft, call, creates):
    created, refused = {}, {}
    for creation_id, properties in creates.items():
        call.key = creation_id
        try:
            with draft.batch.savepoint():
                created[creation_id] = datatype.build_create(draft, call, creation_id, properties)
        except SetError as error:
            refused[creation_id] = error.as_json()
        else:
            call.created_ids[creation_id] = created[creation_id]["id"]
    return {"created": created or None, "notCreated": refused or None}


def _build_updates(datatype, draft, call, updates, destroying):
    updated, refused = {}, {}
    for given_id, patch in updates.items():
        call.key = given_id
        try:
            object_id = call.resolve_id(given_id)
            if object_id in destroying:
                raise SetError("willDestroy", "the same request destroys it")
            if object_id in updated:
                raise SetError("invalidPatch", f"{object_id!r} is already patched by this call")
            current = datatype.read_drafted(draft, call, call.account, [object_id]).get(object_id)
            if current is None:
                raise SetError("notFound", f"no {datatype.name} {object_id!r}")
            patched = apply_patch(current, datatype.normalise_patch(patch))
            with draft.batch.savepoint():
                updated[object_id] = datatype.build_update(
                    draft, call, object_id, current, patched
                )
        except SetError as error:
            refused[given_id] = error.as_json()
    return {"updated": updated or None, "notUpdated": refused or None}


def _build_destroys(datatype, draft, call, destroys):
    destroyed, refused = [], {}
    for given_id in destroys:
        call.key = given_id
        try:
            object_id = call.resolve_id(given_id)
            current = datatype.read_drafted(draft, call, call.account, [object_id]).get(object_id)
            if current is None:
                raise SetError("notFound", f"no {datatype.name} {object_id!r}")
            with draft.batch.savepoint():
                datatype.build_destroy(draft, call, object_id, current)
            destroyed.append(object_id)
        except SetError as error:
            refused[given_id] = error.as_json()
    return {"destroyed": destroyed or None, "notDestroyed": refused or None}


async def standard_copy(datatype, writer, max_objects, context, arguments):
    """
    The /copy method (RFC 8620 section 5.4): the records copied into
    another account (the original's properties, with the client's in their
    place), all as one batch, then, if asked, the originals of those copied
    destroyed by one implicit /set in the account they came from.

    @return: the /copy response arguments, or with C{onSuccessDestroyOriginal}
        a list of C{(method name, arguments)}: the /copy response, then the
        implicit /set's (or its error).
    """
    check_arguments(arguments, method_arguments(datatype, "copy", COPY_ARGUMENTS))
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
    states = _CopyStates(*(
        optional_string(arguments, name, "a state string")
        for name in ("ifFromInState", "ifInState", "destroyFromIfInState")
    ))
    extra = type_arguments(datatype, "copy", arguments)
    prepared = await datatype.prepare(context, target, SetRequest(creates, {}, []), extra)
    call = SetCall(context, target, extra, prepared)
    state_account = datatype.state_account(target)
    try:
        written = await writer.write(
            state_account, _build_copy, datatype, call, source, creates, states
        )
    finally:
        datatype.release(prepared)
    outcome = written.outcome
    context.created_ids.update(outcome.created_ids)
    response = {
        "fromAccountId": account_id(source),
        "accountId": account_id(target),
        "oldState": encode_state(outcome.old_modseq),
        "newState": encode_state(
            written.type_modseq(state_account, datatype.name, outcome.old_modseq)
        ),
        **outcome.response,
    }
    if not destroy_original:
        return response
    responses = [(f"{datatype.name}/copy", response)]
    set_arguments = {
        "accountId": account_id(source),
        "ifInState": states.destroy_from_if_in_state,
        "destroy": outcome.copied,
    }
    try:
        responses.append((
            f"{datatype.name}/set",
            await standard_set(datatype, writer, max_objects, context, set_arguments),
        ))
    except MethodError as error:
        responses.append(("error", error.arguments()))
    return responses


@dataclass(frozen=True)
class _CopyStates:
    if_from_in_state: str
    if_in_state: str
    destroy_from_if_in_state: str


@dataclass
class _CopyOutcome(_SetOutcome):
    copied: list = field(default_factory=list)


def _build_copy(connection, batch, datatype, call, source, creates, states):
    call.created_ids = {}
    # The copies are decided on the originals as read: a write to the
    # source before the commit must make this batch conflict too.
    source_account = datatype.state_account(source)
    batch.expect_modseq(source_account, account_modseq(connection, source_account))
    from_modseq = datatype.modseq_in(connection, source)
    if states.if_from_in_state is not None and states.if_from_in_state != encode_state(from_modseq):
        raise _state_mismatch()
    old_modseq = datatype.modseq_in(connection, call.account)
    if states.if_in_state is not None and states.if_in_state != encode_state(old_modseq):
        raise _state_mismatch()
    draft = Draft(connection, batch)
    originals = datatype.read_drafted(
        draft, call, source, sorted({given["id"] for given in creates.values()})
    )
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
            call.key = creation_id
            call.copy_of = (source, original)
            with batch.savepoint():
                created[creation_id] = datatype.build_create(draft, call, creation_id, properties)
        except SetError as error:
            refused[creation_id] = error.as_json()
        else:
            call.created_ids[creation_id] = created[creation_id]["id"]
            copied.append(given["id"])
    response = {"created": created or None, "notCreated": refused or None}
    return _CopyOutcome(old_modseq, dict(call.created_ids), response, copied)
