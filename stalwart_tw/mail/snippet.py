"""
SearchSnippet/get (RFC 8621 section 5): the subject and preview of each
message with the words a filter's text conditions matched marked up
(C{<mark>}, the rest HTML-escaped), or C{null} where nothing matched.

The words come from the text, subject and body conditions of the filter
(in every branch: a snippet shows why a message may have matched), and
match as the full-text index matches them: folded and stemmed.
"""

import msgpack

from stalwart_tw.jmap.errors import REQUEST_TOO_LARGE, MethodError, invalid_arguments
from stalwart_tw.jmap.session import account_id
from stalwart_tw.jmap.standard import check_arguments, require_account
from stalwart_tw.mail.messages import email_id, email_number
from stalwart_tw.store import search_text
from stalwart_tw.store.mail_sql import email_rows

SNIPPET_ARGUMENTS = frozenset({"accountId", "filter", "emailIds"})
_SUBJECT_CONDITIONS = ("text", "subject")
_PREVIEW_CONDITIONS = ("text", "body")


def _texts(node, names, depth=0):
    if not isinstance(node, dict) or depth > 16:
        return []
    if "operator" in node:
        found = []
        for child in node.get("conditions") or []:
            found += _texts(child, names, depth + 1)
        return found
    return [node[name] for name in names if isinstance(node.get(name), str)]


def _read(connection, account, numbers):
    rows = email_rows(connection, account, numbers)
    return {
        number: (msgpack.unpackb(row["envelope"]).get("subject"), row["preview"])
        for number, row in rows.items()
    }


async def search_snippets(store, query, languages, max_objects, context, arguments):
    """
    SearchSnippet/get.

    @param query: the L{EmailQuery} the filter is checked with.
    """
    check_arguments(arguments, SNIPPET_ARGUMENTS)
    account = require_account(context, arguments)
    email_ids = arguments.get("emailIds")
    if not isinstance(email_ids, list) or not all(isinstance(i, str) for i in email_ids):
        raise invalid_arguments("'emailIds' must be an array of Email ids")
    if len(email_ids) > max_objects:
        raise MethodError(REQUEST_TOO_LARGE, f"{len(email_ids)} ids; at most {max_objects}")
    filter_value = arguments.get("filter")
    # The same checks as Email/query: a bad filter is the same error.
    query.compile(filter_value, None)
    subject_terms = " ".join(_texts(filter_value, _SUBJECT_CONDITIONS))
    preview_terms = " ".join(_texts(filter_value, _PREVIEW_CONDITIONS))
    mark_subject = search_text.highlight_terms(subject_terms, languages) if subject_terms else None
    mark_preview = search_text.highlight_terms(preview_terms, languages) if preview_terms else None
    numbers = {email_number(i) for i in email_ids} - {None}
    found = await store.read(_read, account, numbers)
    snippets, not_found = [], []
    for given in dict.fromkeys(email_ids):
        number = email_number(given)
        if number not in found:
            not_found.append(given)
            continue
        subject, preview = found[number]
        snippets.append({
            "emailId": email_id(number),
            "subject": mark_subject(subject) if mark_subject and subject else None,
            "preview": mark_preview(preview) if mark_preview and preview else None,
        })
    return {"accountId": account_id(account), "list": snippets, "notFound": not_found or None}
