"""
The directory as JMAP Principal objects (urn:ietf:params:jmap:principals,
RFC 9670): Principal/get, /changes and /set through the standard
machinery.

There is one directory for the whole server, so every account that has
the capability sees the same Principal state: the modseq of the directory's
change log (account 0). The admin sees every principal; anyone else sees
themselves and the groups they belong to, which are exactly the accounts
they may use. Only the admin may use Principal/set; creating an
individual creates its account (an account is a principal's id). The
secret is write-only: /set takes it, /get never shows it.
"""

from dataclasses import dataclass, field, replace

from stalwart_tw.jmap.errors import FORBIDDEN, MethodError
from stalwart_tw.jmap.ids import decode_id, encode_id
from stalwart_tw.jmap.server import Extension
from stalwart_tw.jmap.standard import (
    SetError,
    WritableType,
    standard_changes,
    standard_get,
    standard_set,
)
from stalwart_tw.store.changes import (
    Changes,
    ChangesUnavailable,
    changes_since,
)
from stalwart_tw.store.directory import (
    ADMIN_NAME,
    CHANGE_TYPE,
    DirectoryError,
    drafted_principal,
)
from stalwart_tw.store.principal_changes import (
    _build_create,
    _check_address,
    _build_delete,
    _build_replace,
    _check_replace,
    _check_secret,
    _new_principal,
)
from stalwart_tw.store.schema import DIRECTORY_ACCOUNT

PRINCIPALS_CAPABILITY = "urn:ietf:params:jmap:principals"
PRINCIPAL_PREFIX = "p"


def principal_id(number):
    """
    @return: the JMAP id of the principal with directory id C{number}.
    """
    return encode_id(PRINCIPAL_PREFIX, number)


def principal_number(text):
    """
    @return: the directory id behind a Principal id, or C{None}.
    """
    return decode_id(PRINCIPAL_PREFIX, text)


def as_jmap(principal, ids_by_name):
    """
    @return: the Principal object of a directory principal.
    """
    return {
        "id": principal_id(principal.id),
        "type": principal.kind,
        "name": principal.name,
        "description": principal.description,
        "email": principal.email,
        "aliases": list(principal.aliases),
        "members": [ids_by_name[name] for name in principal.members if name in ids_by_name],
        "quota": principal.quota,
        "timeZone": principal.timezone,
    }


@dataclass
class _Prepared:
    """
    What a Principal/set computes on the reactor before building: the
    hashes of the secrets it sets, and the creation time.
    """

    now: int
    # creation id -> secret hash
    create_hashes: dict = field(default_factory=dict)
    # id as the client gave it (maybe "#creationId") -> secret hash
    update_hashes: dict = field(default_factory=dict)


def _settable_secret(properties):
    secret = properties.get("secret")
    return secret if isinstance(secret, str) and secret else None


class PrincipalType(WritableType):
    """
    Principals of the directory. Only the admin may change them; a
    Principal/set is one directory write, however many principals it
    touches.
    """

    name = CHANGE_TYPE
    properties = frozenset(
        {"id", "type", "name", "description", "email", "aliases", "members", "quota", "timeZone"}
    )

    def __init__(self, directory, store):
        self._directory = directory
        self._store = store

    def state_account(self, account):
        # One directory for the whole server.
        return DIRECTORY_ACCOUNT

    @staticmethod
    def visible_to(context):
        """
        @return: the principal ids the caller may see, or C{None}: all.
        """
        if context.principal.name == ADMIN_NAME:
            return None
        return set(context.accounts)

    _visible = visible_to

    async def read(self, context, account, ids, properties=None, extra=None):
        return (await self.read_with_state(context, account, ids))[1]

    async def read_with_state(self, context, account, ids, properties=None, extra=None):
        visible = self._visible(context)
        numbers = None
        if ids is not None:
            numbers = {principal_number(object_id) for object_id in ids} - {None}
            if visible is not None:
                numbers &= visible
        elif visible is not None:
            numbers = visible
        modseq, found, member_ids = await self._directory.snapshot(numbers)
        ids_by_name = {name: principal_id(number) for name, number in member_ids.items()}
        return modseq, {principal_id(p.id): as_jmap(p, ids_by_name) for p in found}

    def modseq(self, context, account):
        return self._directory.modseq()

    async def changes(self, context, account, since, max_changes, extra=None):
        found = await self._store.read(
            changes_since, DIRECTORY_ACCOUNT, CHANGE_TYPE, since, max_changes
        )
        visible = self._visible(context)
        if visible is None:
            return Changes(
                [principal_id(int(n)) for n in found.created],
                [principal_id(int(n)) for n in found.updated],
                [principal_id(int(n)) for n in found.destroyed],
                found.new_modseq,
                found.has_more,
                found.new_skip,
            )
        # For anyone else: a principal that changed and is out of sight now
        # may be one they saw before (a group they left) or one they never
        # saw. Nothing says which, and naming it would tell them of a
        # principal they may not see: they fetch their few principals again.
        changed = [int(n) for n in (*found.created, *found.updated, *found.destroyed)]
        if any(number not in visible for number in changed):
            raise ChangesUnavailable(
                "principals out of your sight changed; fetch your principals again"
            )
        return Changes(
            [principal_id(int(n)) for n in found.created],
            [principal_id(int(n)) for n in found.updated],
            [],
            found.new_modseq,
            found.has_more,
            found.new_skip,
        )

    # Writing (Principal/set): hashing first, on the hash threads; then
    # every object built into one batch through a Draft.

    async def prepare(self, context, account, request, extra):
        prepared = _Prepared(self._directory.now())
        for creation_id, properties in request.create.items():
            secret = _settable_secret(properties)
            if secret is not None:
                prepared.create_hashes[creation_id] = await self._directory.hash_secret(secret)
        for given_id, patch in request.update.items():
            secret = _settable_secret(patch)
            if secret is not None:
                prepared.update_hashes[given_id] = await self._directory.hash_secret(secret)
        return prepared

    def read_drafted(self, draft, call, account, ids):
        visible = self._visible(call.context)
        found = {}
        for object_id in ids:
            number = principal_number(object_id)
            if number is None or (visible is not None and number not in visible):
                continue
            principal, member_ids = drafted_principal(draft, number)
            if principal is not None:
                ids_by_name = {name: principal_id(n) for name, n in member_ids.items()}
                found[object_id] = as_jmap(principal, ids_by_name)
        return found

    def build_create(self, draft, call, creation_id, properties):
        _check_writable(properties, creating=True)
        members = self._member_names(draft, call, properties.get("members") or [])
        _check_addresses(properties)
        with _as_set_error(properties):
            new = _new_principal(
                properties.get("type"), properties.get("name"), properties.get("secret"),
                properties.get("description"), properties.get("email"),
                properties.get("aliases") or (), members, properties.get("quota", 0),
                properties.get("timeZone"),
            )
            new = replace(
                new, secret_hash=call.prepared.create_hashes.get(creation_id),
                created_at=call.prepared.now,
            )
            number = _build_create(draft, new)
        return {"id": principal_id(number)}

    def build_update(self, draft, call, object_id, current, patched):
        _check_writable(patched, creating=False)
        for fixed in ("id", "type"):
            if patched.get(fixed) != current.get(fixed):
                raise SetError("invalidProperties", f"{fixed} cannot change", [fixed])
        changes = {
            column: patched.get(prop)
            for prop, column in _FIELDS.items()
            if patched.get(prop) != current.get(prop)
        }
        secret_hash = None
        if "secret" in patched:
            with _as_set_error(["secret"]):
                _check_secret(patched["secret"])
            secret_hash = call.prepared.update_hashes.get(call.key)
        addresses = None
        if (patched.get("email"), patched.get("aliases") or []) != (
            current.get("email"), current.get("aliases") or []
        ):
            addresses = (patched.get("email"), patched.get("aliases") or [])
        members = None
        if (patched.get("members") or []) != (current.get("members") or []):
            members = self._member_names(draft, call, patched.get("members") or [])
        if not (changes or addresses is not None or members is not None or secret_hash):
            return None
        if addresses is not None:
            _check_addresses(patched)
        touched = [prop for prop, column in _FIELDS.items() if column in changes]
        with _as_set_error([*touched, *(["email", "aliases"] if addresses else [])]):
            changes, addresses, members = _check_replace(changes, addresses, members)
            if secret_hash is not None:
                changes["secret_hash"] = secret_hash
            _build_replace(draft, current["name"], changes, addresses, members)
        return None

    def build_destroy(self, draft, call, object_id, current):
        if current["name"] == ADMIN_NAME:
            raise SetError("forbidden", "the admin principal cannot be destroyed")
        with _as_set_error(["id"]):
            _build_delete(draft, current["name"])

    def _member_names(self, draft, call, member_ids):
        if not isinstance(member_ids, list):
            raise SetError("invalidProperties", "members must be an array of ids", ["members"])
        names = []
        for given in member_ids:
            try:
                number = principal_number(call.resolve_id(given))
            except SetError:
                raise SetError(
                    "invalidProperties", f"no principal was created as {given!r}", ["members"]
                ) from None
            member = None if number is None else draft.first("principals", id=number)
            if member is None:
                raise SetError("invalidProperties", f"no principal {given!r}", ["members"])
            names.append(member["name"])
        return names


# Principal property -> directory field, for the plain fields.
_FIELDS = {
    "name": "name",
    "description": "description",
    "quota": "quota",
    "timeZone": "timezone",
}

_WRITABLE = frozenset(
    {"id", "type", "name", "description", "email", "aliases", "members", "quota",
     "timeZone", "secret"}
)


def _check_writable(properties, creating):
    unknown = sorted(set(properties) - _WRITABLE)
    if unknown:
        raise SetError("invalidProperties", f"unknown property {unknown[0]!r}", unknown)
    if creating:
        if "id" in properties:
            raise SetError("invalidProperties", "id is set by the server", ["id"])
        missing = [prop for prop in ("type", "name") if prop not in properties]
        if missing:
            raise SetError("invalidProperties", f"{missing[0]} is required", missing)
    for name, (accepts, what) in _SHAPES.items():
        if name in properties and not accepts(properties[name]):
            raise SetError("invalidProperties", f"{name} must be {what}", [name])


def _strings(value):
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _optional(accepts):
    return lambda value: value is None or accepts(value)


def _is_str(value):
    return isinstance(value, str)


# The JSON shape of each writable property, checked before any rule of the
# directory: a value of the wrong type is that object's SetError, never a
# failure of the whole call.
_SHAPES = {
    "type": (_is_str, "a string"),
    "name": (_is_str, "a string"),
    "description": (_optional(_is_str), "null or a string"),
    "email": (_optional(_is_str), "null or a string"),
    "aliases": (_optional(_strings), "null or an array of strings"),
    "members": (_optional(_strings), "null or an array of ids"),
    "quota": (lambda value: isinstance(value, int) and not isinstance(value, bool),
              "a number of bytes"),
    "timeZone": (_optional(_is_str), "null or a string"),
    "secret": (_is_str, "a string"),
}


# What of a principal a directory rule is about -> the Principal properties
# an invalidProperties SetError names (RFC 8620 section 5.3).
_PROPERTIES_OF_FIELD = {
    "name": ["name"],
    "kind": ["type"],
    "address": ["email", "aliases"],
    "members": ["members"],
    "secret": ["secret"],
    "quota": ["quota"],
    "timezone": ["timeZone"],
    "description": ["description"],
}


class _as_set_error:
    """
    A directory rule broken while building: that object's SetError,
    naming the properties at fault (C{given}, those the client sent, when
    the rule does not say).
    """

    def __init__(self, given=()):
        self._given = sorted(set(given) - {"id"})

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if isinstance(error, DirectoryError):
            properties = _PROPERTIES_OF_FIELD.get(error.field) or self._given or None
            raise SetError("invalidProperties", str(error), properties) from None
        return False


def _check_addresses(properties):
    # Each address property on its own, so that a SetError names the one
    # at fault rather than both.
    given = [("email", properties.get("email"))] if properties.get("email") is not None else []
    given += [("aliases", alias) for alias in properties.get("aliases") or ()]
    for name, address in given:
        try:
            _check_address(address)
        except DirectoryError as error:
            raise SetError("invalidProperties", str(error), [name]) from None


class PrincipalsExtension(Extension):
    """
    The principals capability: Principal/get, /changes, /set, /query and
    /queryChanges, over the one directory of the server.

    @param directory: the L{Directory}.
    @param store: the L{Store} the change log is read from.
    @param writer: the L{AccountWriter} Principal/set commits through.
    @param settings: the node's settings (limits).
    """

    capability = PRINCIPALS_CAPABILITY
    # Principal states are the directory's (account 0), announced under
    # every account the subscriber watches.
    shared_states = {DIRECTORY_ACCOUNT: {CHANGE_TYPE}}

    def __init__(self, directory, store, writer, settings):
        self.principals = PrincipalType(directory, store)
        self._store = store
        self._writer = writer
        self._settings = settings

    def session_capability(self, principal):
        return {}, {"currentUserPrincipalId": principal_id(principal.id)}

    def methods(self):
        from stalwart_tw.jmap.principal_query import PrincipalQuery
        from stalwart_tw.jmap.query import standard_query, standard_query_changes

        principals, settings, writer = self.principals, self._settings, self._writer
        query = PrincipalQuery(principals, self._store)
        return {
            "Principal/get": lambda context, arguments: standard_get(
                principals, settings.max_objects_in_get, context, arguments
            ),
            "Principal/changes": lambda context, arguments: standard_changes(
                principals, settings.changes_max_results, context, arguments
            ),
            "Principal/set": lambda context, arguments: _admin_only(context) or standard_set(
                principals, writer, settings.max_objects_in_set, context, arguments
            ),
            "Principal/query": lambda context, arguments: standard_query(
                principals, query, settings, context, arguments
            ),
            "Principal/queryChanges": lambda context, arguments: standard_query_changes(
                principals, query, settings, context, arguments
            ),
        }


def _admin_only(context):
    if context.principal.name != ADMIN_NAME:
        raise MethodError(FORBIDDEN, "only the admin may change principals")
