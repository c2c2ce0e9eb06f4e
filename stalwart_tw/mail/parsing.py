"""
What a parsing process runs (L{stalwart_tw.processes.ProcessPool}): from
a message's bytes to an L{Ingested}, everything about it that costs CPU
(MIME parsing, language detection, stemming), done once, before the write
is built. It imports no database or network code, so a parsing process
holds only the parser and the language model.
"""

import email.utils
from dataclasses import dataclass
from datetime import datetime

import msgpack

from stalwart_tw.mail import mime
from stalwart_tw.store import search_text
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
        search=search_text.index_row(0, 0, view.search_text(), default_language),
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
    search_text.warm_up()
