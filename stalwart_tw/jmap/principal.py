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

from stalwart_tw.jmap.errors import FORBIDDEN, MethodError
from stalwart_tw.jmap.ids import decode_id, encode_id
from stalwart_tw.jmap.standard import (
    SetError,
    WritableType,
    resolve_id,
    standard_changes,
    standard_get,
    standard_set,
)
from stalwart_tw.store.changes import (
    Changes,
    ChangesUnavailable,
    changes_since,
    type_modseq,
)
from stalwart_tw.store.directory import ADMIN_NAME, CHANGE_TYPE, DirectoryError
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


class PrincipalType(WritableType):
    """
    Principals of the directory. Only the admin may change them; a write
    is one atomic directory change.
    """

    name = CHANGE_TYPE
    properties = frozenset(
        {"id", "type", "name", "description", "email", "aliases", "members", "quota", "timeZone"}
    )

    def __init__(self, directory, store):
        self._directory = directory
        self._store = store

    @staticmethod
    def _visible(context):
        # None: everything.
        if context.principal.name == ADMIN_NAME:
            return None
        return set(context.accounts)

    async def read(self, context, account, ids):
        return (await self.read_with_state(context, account, ids))[1]

    async def read_with_state(self, context, account, ids):
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
        return self._store.read(type_modseq, DIRECTORY_ACCOUNT, CHANGE_TYPE)

    async def changes(self, context, account, since_modseq, max_changes):
        found = await self._store.read(
            changes_since, DIRECTORY_ACCOUNT, CHANGE_TYPE, since_modseq, max_changes
        )
        visible = self._visible(context)
        if visible is None:
            return Changes(
                [principal_id(int(n)) for n in found.created],
                [principal_id(int(n)) for n in found.updated],
                [principal_id(int(n)) for n in found.destroyed],
                found.new_modseq,
                found.has_more,
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
        )


    # Writing (Principal/set).

    async def create(self, context, account, properties, guard):
        _check_writable(properties, creating=True)
        kind, name = properties.get("type"), properties.get("name")
        members = await self._member_names(context, properties.get("members", []))
        principal = await _directory_call(self._directory.create_principal(
            kind, name, secret=properties.get("secret"),
            description=properties.get("description"), email=properties.get("email"),
            aliases=properties.get("aliases", ()), members=members,
            quota=properties.get("quota", 0), timezone=properties.get("timeZone"),
            if_modseq=guard.modseq,
        ))
        guard.passed()
        return {"id": principal_id(principal.id)}

    async def update(self, context, account, object_id, current, patched, guard):
        _check_writable(patched, creating=False)
        for fixed in ("id", "type"):
            if patched.get(fixed) != current.get(fixed):
                raise SetError("invalidProperties", f"{fixed} cannot change", [fixed])
        changes = {
            column: patched.get(prop)
            for prop, column in _FIELDS.items()
            if patched.get(prop) != current.get(prop)
        }
        if "secret" in patched:
            changes["secret"] = patched["secret"]
        addresses = None
        if (patched.get("email"), patched.get("aliases", [])) != (
            current.get("email"), current.get("aliases", [])
        ):
            addresses = (patched.get("email"), patched.get("aliases", []))
        members = None
        if patched.get("members", []) != current.get("members", []):
            members = await self._member_names(context, patched.get("members", []))
        if changes or addresses is not None or members is not None:
            await _directory_call(self._directory.replace(
                current["name"], changes=changes, addresses=addresses, members=members,
                if_modseq=guard.modseq,
            ))
            guard.passed()
        return None

    async def destroy(self, context, account, object_id, guard):
        principal = await self._directory.get_by_id(principal_number(object_id))
        if principal is None:
            raise SetError("notFound", f"no Principal {object_id!r}")
        if principal.name == ADMIN_NAME:
            raise SetError("forbidden", "the admin principal cannot be destroyed")
        await _directory_call(self._directory.delete(principal.name, if_modseq=guard.modseq))
        guard.passed()

    async def _member_names(self, context, member_ids):
        if not isinstance(member_ids, list):
            raise SetError("invalidProperties", "members must be an array of ids", ["members"])
        names = []
        for given in member_ids:
            number = principal_number(resolve_id(context, given))
            member = None if number is None else await self._directory.get_by_id(number)
            if member is None:
                raise SetError("invalidProperties", f"no principal {given!r}", ["members"])
            names.append(member.name)
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


_PROPERTY_OF_ERROR = {
    "PrincipalExists": ["name"],
    "AddressInUse": ["email", "aliases"],
}


async def _directory_call(call):
    try:
        return await call
    except DirectoryError as error:
        properties = _PROPERTY_OF_ERROR.get(type(error).__name__)
        raise SetError("invalidProperties", str(error), properties) from None


def register_principals(registry, directory, store, settings):
    """
    Add Principal/get and Principal/changes to a L{MethodRegistry}.
    """
    principals = PrincipalType(directory, store)
    registry.register(
        "Principal/get",
        PRINCIPALS_CAPABILITY,
        lambda context, arguments: standard_get(
            principals, settings.max_objects_in_get, context, arguments
        ),
    )
    registry.register(
        "Principal/set",
        PRINCIPALS_CAPABILITY,
        lambda context, arguments: _admin_only(context) or standard_set(
            principals, settings.max_objects_in_set, context, arguments
        ),
    )
    registry.register(
        "Principal/changes",
        PRINCIPALS_CAPABILITY,
        lambda context, arguments: standard_changes(
            principals, settings.changes_max_results, context, arguments
        ),
    )
    return principals


def _admin_only(context):
    if context.principal.name != ADMIN_NAME:
        raise MethodError(FORBIDDEN, "only the admin may change principals")
