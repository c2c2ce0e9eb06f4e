"""
The SQL of mail (RFC 8621): what mail/ reads from the store, run on the
reader threads. Written in SQLAlchemy Core that SQLite and PostgreSQL both
accept; full-text matching is store/fts.py's.

Mailbox counts are worked out from the rows every time they are read (a
caller caches them by state), never kept as numbers a batch must adjust: a
count cannot drift from the messages it counts.
"""

from sqlalchemy import and_, distinct, exists, func, select

from stalwart_tw.store import schema

MAILBOX = "Mailbox"
EMAIL = "Email"
THREAD = "Thread"

# Keywords that make a message count as read (RFC 8621 section 2).
READ_KEYWORDS = ("$seen", "$draft")

_mailboxes = schema.mailboxes
_emails = schema.emails
_members = schema.email_mailboxes
_keywords = schema.email_keywords
_subscriptions = schema.mailbox_subscriptions


def mailbox_rows(connection, account, ids=None):
    """
    @param ids: the mailbox numbers wanted, or C{None} for all.
    @return: mailbox number -> its row (a dict of every column).
    """
    query = select(_mailboxes).where(_mailboxes.c.account_id == account)
    if ids is not None:
        query = query.where(_mailboxes.c.id.in_(sorted(ids)))
    return {row.id: dict(row._mapping) for row in connection.execute(query)}


def subscribed(connection, account, principal_id):
    """
    @return: the numbers of the mailboxes of C{account} that the principal
        is subscribed to.
    """
    query = select(_subscriptions.c.mailbox_id).where(
        (_subscriptions.c.account_id == account)
        & (_subscriptions.c.principal_id == principal_id)
    )
    return set(connection.execute(query).scalars())


def unread(email_id_column, account):
    """
    @return: a clause true for messages with neither C{$seen} nor C{$draft}.
    """
    return ~exists().where(
        (_keywords.c.account_id == account)
        & (_keywords.c.email_id == email_id_column)
        & _keywords.c.keyword.in_(READ_KEYWORDS)
    )


def _joined_emails():
    return _members.join(
        _emails,
        and_(_emails.c.account_id == _members.c.account_id, _emails.c.id == _members.c.email_id),
    )


def mailbox_counts(connection, account, trash=None):
    """
    The counts of RFC 8621 section 2 for every mailbox of the account.
    unreadThreads is the "quality" count: threads with a message in the
    mailbox and an unread message anywhere in the thread, where a message
    only in the Trash counts for the Trash alone and the Trash counts only
    the unread messages in it.

    @param trash: the number of the mailbox whose role is trash, or C{None}.
    @return: mailbox number -> C{[totalEmails, unreadEmails, totalThreads,
        unreadThreads]} (mailboxes without messages are left out).
    """
    counts = {}

    def add(rows, index):
        for mailbox_id, count in rows:
            counts.setdefault(mailbox_id, [0, 0, 0, 0])[index] = count

    in_account = _members.c.account_id == account
    by_mailbox = _members.c.mailbox_id
    add(connection.execute(
        select(by_mailbox, func.count()).where(in_account).group_by(by_mailbox)
    ), 0)
    add(connection.execute(
        select(by_mailbox, func.count())
        .where(in_account, unread(_members.c.email_id, account))
        .group_by(by_mailbox)
    ), 1)
    add(connection.execute(
        select(by_mailbox, func.count(distinct(_emails.c.thread_id)))
        .select_from(_joined_emails())
        .where(in_account)
        .group_by(by_mailbox)
    ), 2)
    # Threads with an unread message outside (or, for the Trash, inside)
    # the Trash.
    other = _members.alias("other")
    unread_thread = (
        select(_emails.c.thread_id)
        .select_from(_emails.join(
            other, and_(other.c.account_id == _emails.c.account_id,
                        other.c.email_id == _emails.c.id)))
        .where(_emails.c.account_id == account, unread(_emails.c.id, account))
    )
    if trash is None:
        add(connection.execute(
            select(by_mailbox, func.count(distinct(_emails.c.thread_id)))
            .select_from(_joined_emails())
            .where(in_account, _emails.c.thread_id.in_(unread_thread))
            .group_by(by_mailbox)
        ), 3)
        return counts
    add(connection.execute(
        select(by_mailbox, func.count(distinct(_emails.c.thread_id)))
        .select_from(_joined_emails())
        .where(in_account, by_mailbox != trash,
               _emails.c.thread_id.in_(unread_thread.where(other.c.mailbox_id != trash)))
        .group_by(by_mailbox)
    ), 3)
    add(connection.execute(
        select(by_mailbox, func.count(distinct(_emails.c.thread_id)))
        .select_from(_joined_emails())
        .where(in_account, by_mailbox == trash,
               _emails.c.thread_id.in_(unread_thread.where(other.c.mailbox_id == trash)))
        .group_by(by_mailbox)
    ), 3)
    return counts


def mailbox_email_count(connection, account, mailbox_id):
    """
    @return: how many messages the mailbox holds.
    """
    return connection.execute(
        select(func.count()).where(
            (_members.c.account_id == account) & (_members.c.mailbox_id == mailbox_id)
        )
    ).scalar_one()


def type_modseqs(connection, account, type_names):
    """
    @return: type name -> its modseq in the account (0 for none yet).
    """
    table = schema.type_state
    rows = connection.execute(
        select(table.c.type_name, table.c.modseq).where(
            (table.c.account_id == account) & table.c.type_name.in_(type_names)
        )
    )
    found = dict.fromkeys(type_names, 0)
    found.update((name, modseq) for name, modseq in rows)
    return found


def thread_emails(connection, account, numbers=None):
    """
    @param numbers: the thread numbers wanted, or C{None} for all.
    @return: thread number -> its message numbers, oldest received first
        (ties by number, so the order is stable).
    """
    query = select(_emails.c.thread_id, _emails.c.id).where(_emails.c.account_id == account)
    if numbers is not None:
        query = query.where(_emails.c.thread_id.in_(sorted(numbers)))
    query = query.order_by(_emails.c.thread_id, _emails.c.received_at, _emails.c.id)
    found = {}
    for thread, number in connection.execute(query):
        found.setdefault(thread, []).append(number)
    return found


def email_rows(connection, account, numbers=None):
    """
    @param numbers: the message numbers wanted, or C{None} for all.
    @return: message number -> its C{emails} row (a dict), with
        C{"mailboxes"} (a sorted list of mailbox numbers) and
        C{"keywords"} (a sorted list) added.
    """
    condition = _emails.c.account_id == account
    if numbers is not None:
        condition = condition & _emails.c.id.in_(sorted(numbers))
    rows = {
        row.id: {**row._mapping, "mailboxes": [], "keywords": []}
        for row in connection.execute(select(_emails).where(condition))
    }
    if not rows:
        return rows
    wanted = sorted(rows)
    for number, mailbox in connection.execute(
        select(_members.c.email_id, _members.c.mailbox_id)
        .where(_members.c.account_id == account, _members.c.email_id.in_(wanted))
        .order_by(_members.c.email_id, _members.c.mailbox_id)
    ):
        rows[number]["mailboxes"].append(mailbox)
    for number, keyword in connection.execute(
        select(_keywords.c.email_id, _keywords.c.keyword)
        .where(_keywords.c.account_id == account, _keywords.c.email_id.in_(wanted))
        .order_by(_keywords.c.email_id, _keywords.c.keyword)
    ):
        rows[number]["keywords"].append(keyword)
    return rows


def account_usage(connection, account):
    """
    @return: the bytes of the messages the account holds.
    """
    return connection.execute(
        select(func.coalesce(func.sum(_emails.c.size), 0)).where(_emails.c.account_id == account)
    ).scalar_one()


def principal_quota(connection, principal_id):
    """
    @return: the principal's quota in bytes (0: none).
    """
    table = schema.principals
    value = connection.execute(
        select(table.c.quota).where(table.c.id == principal_id)
    ).scalar_one_or_none()
    return value or 0


def emails_holding(connection, account, blob_hashes):
    """
    @return: which of C{blob_hashes} a message of the account is made of.
    """
    query = select(_emails.c.blob_hash).where(
        (_emails.c.account_id == account) & _emails.c.blob_hash.in_(sorted(blob_hashes))
    )
    return set(connection.execute(query).scalars())
