"""
From raw bytes to the rows of a stored message: the one path of every
message that enters an account (Email/import, Email/set create, delivery).

L{ingest} is the costly part (MIME parsing, language detection, stemming)
and runs in a parsing process, once per message, before the write is built;
L{create_email} then adds the rows to a batch, deciding the message's
number and thread from the account as drafted. What a follower applies
is the rows: nothing here runs again on another node.
"""

import email.utils
from dataclasses import dataclass
from datetime import datetime

import msgpack

from stalwart_tw.mail import mime, thread
from stalwart_tw.mail.messages import EMAIL, email_id, touch_counts
from stalwart_tw.store import fts
from stalwart_tw.store.collation import unicode_casemap

# The header condition of Email/query compares at most this much of a value.
MAX_HEADER_VALUE = 1000
# And looks at no more than this many header fields of a message.
MAX_HEADERS = 500


@dataclass
class Ingested:
    """
    A parsed message, ready to become rows.
    """

    blob_hash: str
    size: int
    layout: bytes
    envelope: bytes
    preview: str
    has_attachment: bool
    sent_at: object
    received_at: object
    subject_sort: str
    from_sort: str
    to_sort: str
    own_ids: list
    referenced_ids: list
    search: dict
    headers: list
    attachments_size: int
    header_count: int


def _first_address_key(addresses):
    if not addresses:
        return ""
    first = addresses[0]
    return unicode_casemap(first.get("name") or first.get("email") or "")


def _epoch(text):
    # An RFC 3339 date from the parser, or None.
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except (ValueError, OverflowError):
        return None


def _latest_received(view):
    # RFC 8621: receivedAt defaults to the most recent Received header.
    for value in view.header("Received", "Raw", True)[:1]:
        _, _, when = value.rpartition(";")
        try:
            moment = email.utils.parsedate_to_datetime(when.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment is not None and moment.tzinfo is not None:
            return int(moment.timestamp())
    return None


def ingest(raw, blob_hash, default_language):
    """
    Parse a message: CPU work, for a parsing process (L{ProcessPool}); a
    pure function of its arguments.

    @return: an L{Ingested}.
    """
    view = mime.parse(raw)
    envelope = view.convenience()
    own, referenced, base_subject = view.thread_keys()
    header_fields = view.headers()
    headers = []
    for field in header_fields[:MAX_HEADERS]:
        name = field["name"].lower()
        if len(name) > 255:
            continue
        text = mime.decode_words(" ".join(field["value"].split()))
        headers.append((name, text.casefold()[:MAX_HEADER_VALUE]))
    attachments_size = sum(part.get("size") or 0 for part in view.attachments(["size"]))
    return Ingested(
        blob_hash=blob_hash,
        size=len(raw),
        layout=msgpack.packb(view.layout),
        envelope=msgpack.packb(envelope),
        preview=view.preview,
        has_attachment=view.has_attachment,
        sent_at=_epoch(envelope.get("sentAt")),
        received_at=_latest_received(view),
        subject_sort=unicode_casemap(base_subject),
        from_sort=_first_address_key(envelope.get("from")),
        to_sort=_first_address_key(envelope.get("to")),
        own_ids=own,
        referenced_ids=referenced,
        search=fts.index_row(0, 0, view.search_text(), default_language),
        headers=headers,
        attachments_size=attachments_size,
        header_count=len(header_fields),
    )


def ingest_file(path, blob_hash, default_language):
    """
    L{ingest} of the message in the file at C{path}: what a parsing
    process is sent, so that the message's bytes cross no pipe.
    """
    with open(path, "rb") as message_file:
        raw = message_file.read()
    return ingest(raw, blob_hash, default_language)


def warm_up():
    """
    Load what parsing needs (the language model most of all) before the
    first message waits for it: once per parsing process.
    """
    fts.warm_up()


def create_email(draft, account, ingested, mailboxes, keywords, received_at):
    """
    Add a new message to the batch: its rows, its thread, the change log,
    a reference on its blob.

    @param mailboxes: mailbox numbers (checked by the caller).
    @param keywords: lower-case keywords (checked by the caller).
    @param received_at: seconds since the epoch.
    @return: C{(message number, thread number)}.
    """
    number = draft.next_number(f"{EMAIL}/{account}")
    thread_number = thread.assign_thread(
        draft, account, number, ingested.own_ids, ingested.referenced_ids,
        ingested.subject_sort,
    )
    batch = draft.batch
    batch.insert(
        "emails", account_id=account, id=number, thread_id=thread_number,
        blob_hash=ingested.blob_hash, size=ingested.size, received_at=received_at,
        sent_at=ingested.sent_at, subject_sort=ingested.subject_sort,
        from_sort=ingested.from_sort, to_sort=ingested.to_sort,
        has_attachment=ingested.has_attachment, preview=ingested.preview,
        envelope=ingested.envelope, layout=ingested.layout,
    )
    for mailbox in sorted(mailboxes):
        batch.insert("email_mailboxes", account_id=account, mailbox_id=mailbox, email_id=number,
                     received_at=received_at)
    for keyword in sorted(keywords):
        batch.insert("email_keywords", account_id=account, email_id=number, keyword=keyword)
    for position, (name, value) in enumerate(ingested.headers):
        batch.insert("email_headers", account_id=account, email_id=number, position=position,
                     name=name, value=value)
    search = dict(ingested.search)
    search.update(rowid=fts.search_rowid(account, number), account_id=account, email_id=number)
    batch.insert("email_search", **search)
    batch.reference_blob(ingested.blob_hash, ingested.size)
    batch.log_change(account, EMAIL, email_id(number), "created")
    # The thread's mailboxes, the new message's among them (the draft sees
    # its rows): their counts moved.
    touch_counts(draft, account, [thread_number])
    return number, thread_number


def copy_email(draft, source_account, row, account, mailboxes, keywords, received_at):
    """
    Add to C{account} a copy of message C{row} of C{source_account}: the
    same blob and parsed rows, a number and thread of its own.

    @return: C{(message number, thread number)}.
    """
    def rows(table):
        return draft.rows(table, account_id=source_account, email_id=row["id"])

    ids = rows("email_message_ids")
    [search] = rows("email_search")
    copied = Ingested(
        blob_hash=row["blob_hash"], size=row["size"], layout=row["layout"],
        envelope=row["envelope"], preview=row["preview"], has_attachment=row["has_attachment"],
        sent_at=row["sent_at"], received_at=received_at, subject_sort=row["subject_sort"],
        from_sort=row["from_sort"], to_sort=row["to_sort"],
        own_ids=[r["message_id"] for r in ids if r["kind"] == "m"],
        referenced_ids=[r["message_id"] for r in ids if r["kind"] == "r"],
        search={key: value for key, value in search.items()
                if key not in ("rowid", "account_id", "email_id")},
        headers=[(r["name"], r["value"]) for r in rows("email_headers")],
        attachments_size=0, header_count=0,
    )
    return create_email(draft, account, copied, mailboxes, keywords, received_at)
