"""
The JMAP Session resource (RFC 8620 section 2): what the server can do,
which accounts the user can reach, and where to send requests.

Its state is a digest of everything else in the document, so it changes
exactly when the document does.
"""

import orjson
from blake3 import blake3

from stalwart_tw.jmap.dispatch import CORE_CAPABILITY
from stalwart_tw.jmap.ids import decode_id, encode_id

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
        on each account), for the capabilities beyond core.
    @return: the Session object for C{principal}.
    """
    base = settings.jmap_url
    capabilities = capabilities or {}
    per_account = {uri: account_object for uri, (_, account_object) in capabilities.items()}
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
