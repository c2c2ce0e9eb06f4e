"""
The directory as JMAP Principal objects (urn:ietf:params:jmap:principals,
RFC 9670): Principal/get and Principal/changes through the standard
machinery.

There is one directory for the whole server, so every account that has
the capability sees the same Principal state: the modseq of the directory's
change log (account 0). The admin sees every principal; anyone else sees
themselves and the groups they belong to, which are exactly the accounts
they may use.
"""

from stalwart_tw.jmap.ids import decode_id, encode_id
from stalwart_tw.jmap.standard import DataType, standard_changes, standard_get
from stalwart_tw.store.changes import Changes, changes_since, type_modseq
from stalwart_tw.store.directory import ADMIN_NAME, CHANGE_TYPE
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


class PrincipalType(DataType):
    """
    Principals read from the directory.
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
        everyone = await self._directory.list()
        ids_by_name = {p.name: principal_id(p.id) for p in everyone}
        visible = self._visible(context)
        objects = {
            principal_id(p.id): as_jmap(p, ids_by_name)
            for p in everyone
            if visible is None or p.id in visible
        }
        if ids is None:
            return objects
        return {object_id: objects[object_id] for object_id in ids if object_id in objects}

    def modseq(self, context, account):
        return self._store.read(type_modseq, DIRECTORY_ACCOUNT, CHANGE_TYPE)

    async def changes(self, context, account, since_modseq, max_changes):
        found = await self._store.read(
            changes_since, DIRECTORY_ACCOUNT, CHANGE_TYPE, since_modseq, max_changes
        )
        visible = self._visible(context)

        def shown(numbers):
            return [
                principal_id(int(number))
                for number in numbers
                if visible is None or int(number) in visible
            ]

        # A destroyed principal can no longer be checked for visibility;
        # its bare id tells a client nothing it could use.
        return Changes(
            shown(found.created),
            shown(found.updated),
            [principal_id(int(number)) for number in found.destroyed],
            found.new_modseq,
            found.has_more,
        )


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
        "Principal/changes",
        PRINCIPALS_CAPABILITY,
        lambda context, arguments: standard_changes(
            principals, settings.changes_max_results, context, arguments
        ),
    )
    return principals
