"""
Principal/query and Principal/queryChanges (RFC 9670 sections 3.5 and
3.6), compiled to SQL and run on the store's reader threads
(L{stalwart_tw.store.principal_query}): the reactor never reads every
principal to filter and sort them.

A caller queries the principals they can see with Principal/get (the
admin: all; anyone else: themselves and their groups), so a query never
reveals a principal that /get would not.
"""

from stalwart_tw.jmap.query import (
    FilterValueError,
    QueryEngine,
    QuerySpec,
    compile_filter,
    compile_sort,
    filter_string,
)
from stalwart_tw.jmap.session import account_number
from stalwart_tw.store import principal_query as sql


def _account_ids(value):
    # RFC 9670: matches when any of the ids is an account of the principal.
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FilterValueError(f"must be an array of account ids, not {value!r}")
    return sql.owns_account({account_number(item) for item in value} - {None})


def _contains(*columns):
    return lambda value: sql.text_contains(filter_string(value).casefold(), *columns)


def _equals(column):
    return lambda value: sql.equals(column, filter_string(value))


PRINCIPAL_QUERY = QuerySpec(
    filter_properties={
        "accountIds": _account_ids,
        "email": lambda value: sql.address_contains(filter_string(value).casefold()),
        "name": _contains(sql.NAME),
        "text": _contains(sql.NAME, sql.PRIMARY_EMAIL, sql.DESCRIPTION),
        "type": _equals(sql.KIND),
        "timeZone": _equals(sql.schema.principals.c.timezone),
    },
    sort_properties={
        "name": sql.NAME,
        "email": sql.PRIMARY_EMAIL,
        "type": sql.KIND,
    },
)


class PrincipalQuery(QueryEngine):
    """
    Principal queries compiled to SQL.

    @param principals: the L{PrincipalType} (who may see what).
    @param store: the L{Store} the query runs on.
    """

    def __init__(self, principals, store):
        self._principals = principals
        self._store = store

    def compile(self, filter_value, sort_value):
        where = compile_filter(PRINCIPAL_QUERY, filter_value, sql.SqlClauses)
        comparators = [
            (comparator.key, comparator.ascending, comparator.collate)
            for comparator in compile_sort(PRINCIPAL_QUERY, sort_value)
        ]
        return where, comparators

    async def run(self, context, account, compiled, extra):
        from stalwart_tw.jmap.principal import principal_id

        where, comparators = compiled
        modseq, numbers = await self._store.read(
            sql.query, self._principals.visible_to(context), where, comparators
        )
        return modseq, [principal_id(number) for number in numbers]
