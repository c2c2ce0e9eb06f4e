"""
The records of messages, changed consistently inside one WriteBatch.

A message is a row of C{emails} with its mailboxes, keywords, Message-IDs
and search text in tables of their own. Every writer of mail (Email/set,
/import, /copy, Mailbox/set destroying a mailbox, delivery later) changes
them through the functions here, so that the change log always says the
same things for the same change:

- the Email itself is created, updated or destroyed;
- its Thread is created, updated or destroyed;
- every Mailbox whose counts may have moved is updated: the mailboxes of
  every message of each thread touched (unreadThreads of a mailbox depends
  on the other messages of its threads), before and after the change.

Functions take a L{Draft} and read what the batch so far leaves, so many
changes to one message in one call compose.
"""

from stalwart_tw.jmap.ids import decode_id, encode_id
from stalwart_tw.store.mail_sql import EMAIL, MAILBOX, READ_KEYWORDS, THREAD

EMAIL_PREFIX = "e"
MAILBOX_PREFIX = "m"
THREAD_PREFIX = "t"

_READ_KEYWORDS = frozenset(READ_KEYWORDS)


def email_id(number):
    return encode_id(EMAIL_PREFIX, number)


def email_number(text):
    return decode_id(EMAIL_PREFIX, text)


def thread_number(text):
    return decode_id(THREAD_PREFIX, text)


def mailbox_id(number):
    return encode_id(MAILBOX_PREFIX, number)


def thread_id(number):
    return encode_id(THREAD_PREFIX, number)


def email_row(draft, account, number):
    """
    @return: the C{emails} row of a message, or C{None}.
    """
    return draft.first("emails", account_id=account, id=number)


def mailboxes_of(draft, account, number):
    """
    @return: the numbers of the mailboxes holding a message.
    """
    return {
        row["mailbox_id"]
        for row in draft.rows("email_mailboxes", account_id=account, email_id=number)
    }


def keywords_of(draft, account, number):
    """
    @return: the keywords of a message (lower-case).
    """
    return {row["keyword"] for row in draft.rows("email_keywords", account_id=account, email_id=number)}


def thread_members(draft, account, thread_number):
    """
    @return: the C{emails} rows of a thread.
    """
    return draft.rows("emails", account_id=account, thread_id=thread_number)


def touch_counts(draft, account, thread_numbers, mailbox_numbers=()):
    """
    Log an update of every mailbox whose counts a change to these threads
    (and to these mailboxes) may have moved.
    """
    touched = set(mailbox_numbers)
    for thread_number in thread_numbers:
        for member in thread_members(draft, account, thread_number):
            touched |= mailboxes_of(draft, account, member["id"])
    for number in sorted(touched):
        draft.batch.log_change(account, MAILBOX, mailbox_id(number), "updated")


def set_mailboxes(draft, account, row, wanted, current=None):
    """
    Put a message in exactly the mailboxes C{wanted} (numbers).

    @param current: its mailboxes as the caller just read them, if known.
    @return: whether anything changed.
    """
    if current is None:
        current = mailboxes_of(draft, account, row["id"])
    if current == wanted:
        return False
    for number in sorted(current - wanted):
        draft.batch.delete("email_mailboxes", account_id=account, mailbox_id=number, email_id=row["id"])
    for number in sorted(wanted - current):
        draft.batch.insert(
            "email_mailboxes", account_id=account, mailbox_id=number, email_id=row["id"],
            received_at=row["received_at"],
        )
    draft.batch.log_change(account, EMAIL, email_id(row["id"]), "updated")
    touch_counts(draft, account, [row["thread_id"]], current | wanted)
    return True


def set_keywords(draft, account, row, wanted, current=None):
    """
    Give a message exactly the keywords C{wanted} (lower-case).

    @param current: its keywords as the caller just read them, if known.
    @return: whether anything changed.
    """
    if current is None:
        current = keywords_of(draft, account, row["id"])
    if current == wanted:
        return False
    for keyword in sorted(current - wanted):
        draft.batch.delete("email_keywords", account_id=account, email_id=row["id"], keyword=keyword)
    for keyword in sorted(wanted - current):
        draft.batch.insert("email_keywords", account_id=account, email_id=row["id"], keyword=keyword)
    draft.batch.log_change(account, EMAIL, email_id(row["id"]), "updated")
    if (current ^ wanted) & _READ_KEYWORDS:
        touch_counts(draft, account, [row["thread_id"]])
    return True


def destroy_email(draft, account, row):
    """
    Destroy a message and everything that hangs on it; its thread goes too
    when it was the last message of it.
    """
    number = row["id"]
    mailboxes = mailboxes_of(draft, account, number)
    for table in ("email_mailboxes", "email_keywords", "email_message_ids", "email_headers",
                  "email_search"):
        draft.batch.delete(table, account_id=account, email_id=number)
    draft.batch.delete("emails", account_id=account, id=number)
    draft.batch.release_blob(row["blob_hash"])
    draft.batch.log_change(account, EMAIL, email_id(number), "destroyed")
    left = thread_members(draft, account, row["thread_id"])
    kind = "updated" if left else "destroyed"
    draft.batch.log_change(account, THREAD, thread_id(row["thread_id"]), kind)
    touch_counts(draft, account, [row["thread_id"]], mailboxes)
