"""
Thread (RFC 8621 section 3): /get and /changes, and how a message finds
its thread.

Threading. A message joins the thread of every message it is linked to:
one whose Message-ID it names in In-Reply-To or References, one that
names its own Message-ID (a reply that arrived first), or one that names
a Message-ID it names too (two replies to a parent never received). A
link counts only between messages with the same base subject (Re:, Fwd:
and list tags removed, case folded), so a reply whose subject was changed
starts a thread of its own, as in most mail clients. When the links reach
several threads, they merge into the oldest (the smallest thread id):
every message of the others moves, and the change log says so for each
moved Email, for both threads and for every mailbox whose thread counts
moved. A thread's id is decided when the batch is built, so every node
applies the same.
"""

from blake3 import blake3

from stalwart_tw.jmap.standard import DataType
from stalwart_tw.mail import messages
from stalwart_tw.mail.messages import email_id, thread_id, thread_number
from stalwart_tw.store.changes import changes_since, type_modseq
from stalwart_tw.store.mail_sql import EMAIL, THREAD, thread_emails

# Message-IDs longer than the column are kept as a digest of themselves.
MAX_MESSAGE_ID = 255
# A hostile message naming thousands of ids links through the first ones.
MAX_LINKS = 100


def message_id_key(value):
    """
    @return: the form a Message-ID is stored and matched in.
    """
    if len(value) <= MAX_MESSAGE_ID:
        return value
    return "#" + blake3(value.encode("utf-8", "surrogatepass")).hexdigest()


def assign_thread(draft, account, number, own_ids, referenced_ids, base_subject):
    """
    Choose the thread of a new message (number C{number}), merging the
    threads it links, and record its Message-IDs.

    @return: the thread's number.
    """
    own = [message_id_key(value) for value in own_ids[:MAX_LINKS]]
    if len(referenced_ids) > MAX_LINKS:
        # In-Reply-To comes first; the nearest ancestors are the last references.
        referenced_ids = referenced_ids[:1] + referenced_ids[1 - MAX_LINKS:]
    referenced = [message_id_key(value) for value in referenced_ids]
    linked = set()
    for value in dict.fromkeys(own + referenced):
        for row in draft.rows("email_message_ids", account_id=account, message_id=value):
            linked.add(row["email_id"])
    threads = set()
    for other in sorted(linked):
        row = messages.email_row(draft, account, other)
        if row is not None and row["subject_sort"] == base_subject:
            threads.add(row["thread_id"])
    if not threads:
        target = draft.next_number(f"{THREAD}/{account}")
        draft.batch.log_change(account, THREAD, thread_id(target), "created")
    else:
        target = min(threads)
        draft.batch.log_change(account, THREAD, thread_id(target), "updated")
        for merged in sorted(threads - {target}):
            _merge(draft, account, merged, target)
    for kind, values in (("m", own), ("r", referenced)):
        for value in dict.fromkeys(values):
            if kind == "r" and value in own:
                continue
            draft.batch.insert(
                "email_message_ids", account_id=account, message_id=value, email_id=number,
                kind=kind,
            )
    return target


def _merge(draft, account, source, target):
    members = messages.thread_members(draft, account, source)
    messages.touch_counts(draft, account, [source, target])
    for row in members:
        draft.batch.update("emails", {"account_id": account, "id": row["id"]}, thread_id=target)
        draft.batch.log_change(account, EMAIL, email_id(row["id"]), "updated")
    draft.batch.log_change(account, THREAD, thread_id(source), "destroyed")
    # After the move, the moved messages' mailboxes count the target.
    messages.touch_counts(draft, account, [target])


def _read_threads(connection, account, numbers):
    return type_modseq(connection, account, THREAD), thread_emails(connection, account, numbers)


class ThreadType(DataType):
    """
    The Thread data type: C{id} and C{emailIds}, oldest message first.
    """

    name = THREAD
    properties = frozenset({"id", "emailIds"})

    def __init__(self, store):
        self._store = store

    async def read(self, context, account, ids, properties=None, extra=None):
        return (await self.read_with_state(context, account, ids, properties, extra))[1]

    async def read_with_state(self, context, account, ids, properties=None, extra=None):
        numbers = None if ids is None else {thread_number(i) for i in ids} - {None}
        modseq, found = await self._store.read(_read_threads, account, numbers)
        return modseq, {
            thread_id(number): {"id": thread_id(number), "emailIds": [email_id(n) for n in members]}
            for number, members in found.items()
        }

    def modseq(self, context, account):
        return self._store.read(type_modseq, account, THREAD)

    def changes(self, context, account, since, max_changes, extra=None):
        return self._store.read(changes_since, account, THREAD, since, max_changes)
