"""
Principal/query and Principal/queryChanges (RFC 9670 sections 3.5 and
3.6) through the in-memory query machinery of L{stalwart_tw.jmap.query}.

A caller queries the principals they can see with Principal/get (the
admin: all; anyone else: themselves and their groups), so a query never
reveals a principal that /get would not.
"""

from stalwart_tw.jmap.principal import principal_number
from stalwart_tw.jmap.query import (
    FilterValueError,
    QuerySpec,
    by_property,
    contains_text,
    equals,
)
from stalwart_tw.jmap.session import account_id
from stalwart_tw.store.principal_changes import GROUP, INDIVIDUAL

# The kinds of principal that own an account (session.py).
ACCOUNT_KINDS = frozenset({INDIVIDUAL, GROUP})


def principal_account(principal):
    """
    @param principal: a Principal object.
    @return: the id of the account it owns, or C{None} (domains, lists).
    """
    number = principal_number(principal["id"])
    if number is None or principal["type"] not in ACCOUNT_KINDS:
        return None
    return account_id(number)


def _account_ids(value):
    # RFC 9670: matches when any of the ids is an account of the principal.
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FilterValueError(f"must be an array of account ids, not {value!r}")
    wanted = frozenset(value)
    return lambda principal: principal_account(principal) in wanted


PRINCIPAL_QUERY = QuerySpec(
    filter_properties={
        "accountIds": _account_ids,
        "email": contains_text("email", "aliases"),
        "name": contains_text("name"),
        "text": contains_text("name", "email", "description"),
        "type": equals("type"),
        "timeZone": equals("timeZone"),
    },
    sort_properties={
        "name": by_property("name"),
        "email": by_property("email"),
        "type": by_property("type"),
    },
)
