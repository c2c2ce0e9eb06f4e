"""
From a parsed message to the rows of a stored message: the one path of
every message that enters an account (Email/import, Email/set create,
delivery).

The costly part (mail/parsing.py) runs in a parsing process, once per
message, before the write is built; L{create_email} then adds the rows to
a batch, deciding the message's number and thread from the account as
drafted. What a follower applies is the rows: nothing here runs again on
another node.
"""

from stalwart_tw.mail import thread
from stalwart_tw.mail.messages import EMAIL, email_id, touch_counts
from stalwart_tw.mail.parsing import Ingested
from stalwart_tw.store import search_text


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
    search.update(rowid=search_text.search_rowid(account, number), account_id=account, email_id=number)
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
