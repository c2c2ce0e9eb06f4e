"""
The JMAP Session resource (RFC 8620 section 2): what the server can do,
which accounts the user can reach, and where to send requests.

Its state is a digest of everything else in the document, so it changes
exactly when the document does. Every API response carries that state, and
building the document reads the directory, so L{SessionCache} keeps each
user's until the directory changes.
"""

from dataclasses import dataclass

import orjson
from blake3 import blake3

from stalwart_tw.jmap.ids import decode_id, encode_id

CORE_CAPABILITY = "urn:ietf:params:jmap:core"

ACCOUNT_PREFIX = "a"


def account_id(principal_id):
    """
    @return: the JMAP id of the account of a principal.
    """
    return encode_id(ACCOUNT_PREFIX, principal_id)


def account_number(text):
    """
    @return: the principal id behind an account id, or C{None} for text
        that is no account id.
    """
    return decode_id(ACCOUNT_PREFIX, text)


def core_capability(settings):
    """
    @return: the urn:ietf:params:jmap:core capability, limits from settings.
    """
    return {
        "maxSizeUpload": settings.max_size_upload,
        "maxConcurrentUpload": settings.max_concurrent_uploads,
        "maxSizeRequest": settings.max_size_request,
        "maxConcurrentRequests": settings.max_concurrent_requests,
        "maxCallsInRequest": settings.max_calls_in_request,
        "maxObjectsInGet": settings.max_objects_in_get,
        "maxObjectsInSet": settings.max_objects_in_set,
        "collationAlgorithms": ["i;ascii-numeric", "i;ascii-casemap", "i;unicode-casemap"],
    }


def _account(principal, personal, account_capabilities):
    return {
        "name": principal.email or principal.name,
        "isPersonal": personal,
        "isReadOnly": False,
        "accountCapabilities": dict(account_capabilities),
    }


def session_document(settings, principal, groups=(), capabilities=None):
    """
    @param groups: the group principals whose accounts C{principal} shares.
    @param capabilities: capability URI -> (its Session object, its object
        on each account or C{None} when it has none), for the capabilities
        beyond core.
    @return: the Session object for C{principal}.
    """
    base = settings.jmap_url
    capabilities = capabilities or {}
    per_account = {
        uri: account_object
        for uri, (_, account_object) in capabilities.items()
        if account_object is not None
    }
    own = account_id(principal.id)
    accounts = {own: _account(principal, True, per_account)}
    for group in groups:
        accounts[account_id(group.id)] = _account(group, False, per_account)
    document = {
        "capabilities": {
            CORE_CAPABILITY: core_capability(settings),
            **{uri: session_object for uri, (session_object, _) in capabilities.items()},
        },
        "accounts": accounts,
        # Core included: clients such as jmapc take their default account
        # from it.
        "primaryAccounts": {CORE_CAPABILITY: own, **{uri: own for uri in capabilities}},
        "username": principal.name,
        "apiUrl": f"{base}/jmap/",
        "downloadUrl": f"{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}",
        "uploadUrl": f"{base}/jmap/upload/{{accountId}}/",
        "eventSourceUrl": (
            f"{base}/jmap/eventsource/?types={{types}}&closeafter={{closeafter}}&ping={{ping}}"
        ),
    }
    document["state"] = blake3(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return document


@dataclass(frozen=True)
class UserSession:
    """
    A principal's Session document, and the principal ids of its accounts.
    """

    principal: object
    document: dict
    accounts: tuple


class SessionCache:
    """
    The Session of each user, built from the directory and the server's
    capabilities, kept until the directory changes.

    @param settings: the node's settings (limits and URLs).
    @param directory: what C{groups_of} and C{get_by_id} are read from.
    @param capabilities: C{capabilities(principal)} -> capability URI ->
        (Session object, account object or C{None}) beyond core.
    @param directory_changed: C{directory_changed(apply_result)}, true when
        an applied batch changed the directory.
    """

    def __init__(self, settings, directory, capabilities, directory_changed):
        self._settings = settings
        self._directory = directory
        self._capabilities = capabilities
        self._directory_changed = directory_changed
        # principal id -> UserSession
        self._sessions = {}
        # Bumped by every change: a Session built across one is not kept.
        self._generation = 0

    def cached(self, principal):
        """
        @return: the L{UserSession} of C{principal} if it is at hand.
        """
        cached = self._sessions.get(principal.id)
        if cached is not None and cached.principal == principal:
            return cached
        return None

    async def get(self, principal):
        """
        @return: the L{UserSession} of C{principal}, from the cache or built.
        """
        cached = self.cached(principal)
        if cached is not None:
            return cached
        generation = self._generation
        group_ids = await self._directory.groups_of(principal.id)
        groups = [await self._directory.get_by_id(group_id) for group_id in group_ids]
        document = session_document(
            self._settings, principal, [g for g in groups if g], self._capabilities(principal)
        )
        session = UserSession(
            principal, document, tuple(account_number(text) for text in document["accounts"])
        )
        if generation == self._generation:
            self._sessions[principal.id] = session
        return session

    def on_applied(self, apply_result):
        """
        A node listener: forget every Session once the directory changed.
        """
        if self._directory_changed(apply_result):
            self._sessions.clear()
            self._generation += 1
