"""
The mail capability (urn:ietf:params:jmap:mail, RFC 8621) as one extension
of the JMAP server: its Session object, its methods and its types.

Every account a user may use holds mail (their own and their groups'
shared ones). An account gets its standard mailboxes the first time a mail
method names it: one small write, after which the account is known to be
ready and the check costs nothing.
"""

from stalwart_tw.jmap.query import standard_query, standard_query_changes
from stalwart_tw.jmap.server import Extension
from stalwart_tw.jmap.session import account_number
from stalwart_tw.jmap.standard import standard_changes, standard_copy, standard_get, standard_set
from stalwart_tw.mail import mime
from stalwart_tw.mail.email import EmailType, email_import, email_parse
from stalwart_tw.mail.parsing import warm_up
from stalwart_tw.mail.mailbox import MailboxQuery, MailboxType, default_mailboxes, mailbox_changes
from stalwart_tw.mail.query import EmailQuery
from stalwart_tw.mail.snippet import search_snippets
from stalwart_tw.mail.thread import ThreadType
from stalwart_tw.store.draft import Draft
from stalwart_tw.store.mail_sql import EMAIL, MAILBOX, THREAD, emails_holding

MAIL_CAPABILITY = "urn:ietf:params:jmap:mail"

# The Email/query sorts this server supports (RFC 8621 section 1.3.1).
EMAIL_SORT_OPTIONS = (
    "receivedAt", "sentAt", "size", "from", "to", "subject", "hasKeyword",
    "allInThreadHaveKeyword", "someInThreadHaveKeyword",
)


def _build_defaults(connection, batch, account):
    return default_mailboxes(Draft(connection, batch), account, account)


class MailExtension(Extension):
    """
    Mailbox, Thread, Email and SearchSnippet.

    @param processes: the L{ProcessPool} that parses arriving messages.
    """

    capability = MAIL_CAPABILITY

    def __init__(self, store, writer, settings, blobs, blob_access, processes, clock):
        self._store = store
        self._writer = writer
        self._settings = settings
        self.languages = (settings.default_language,)
        self.mailboxes = MailboxType(store, settings)
        processes.add_initializer(warm_up)
        self.emails = EmailType(store, blobs, blob_access, settings, blobs.in_thread,
                                processes.run, clock)
        self.threads = ThreadType(store)
        self.email_query = EmailQuery(store, self.languages, settings.changes_max_results)
        self._ready = set()
        # Messages make their blobs, and their parts' blobs, downloadable.
        blob_access.add_holder(emails_holding)
        blob_access.add_deriver(_body_part)

    def session_capability(self, principal):
        settings = self._settings
        return {}, {
            "maxMailboxesPerEmail": None,
            "maxMailboxDepth": settings.mailbox_max_depth,
            "maxSizeMailboxName": settings.mailbox_name_max_len,
            "maxSizeAttachmentsPerEmail": settings.mail_attachments_max_size,
            "emailQuerySortOptions": list(EMAIL_SORT_OPTIONS),
            "mayCreateTopLevelMailbox": True,
        }

    async def ready(self, context, arguments):
        """
        Make sure the accounts a call names have their mailboxes.
        """
        for name in ("accountId", "fromAccountId"):
            account = account_number(arguments.get(name)) if isinstance(arguments, dict) else None
            if account is None or account in self._ready or account not in context.accounts:
                continue
            await self._writer.write(account, _build_defaults, account)
            self._ready.add(account)

    def _method(self, handler):
        async def run(context, arguments):
            await self.ready(context, arguments)
            return await handler(context, arguments)
        return run

    def methods(self):
        settings, writer = self._settings, self._writer
        mailboxes = self.mailboxes
        mailbox_query = MailboxQuery(mailboxes)
        handlers = {
            "Mailbox/get": lambda c, a: standard_get(mailboxes, settings.max_objects_in_get, c, a),
            "Mailbox/changes": lambda c, a: mailbox_changes(
                mailboxes, settings.changes_max_results, c, a),
            "Mailbox/set": lambda c, a: standard_set(
                mailboxes, writer, settings.max_objects_in_set, c, a),
            "Mailbox/query": lambda c, a: standard_query(mailboxes, mailbox_query, settings, c, a),
            "Mailbox/queryChanges": lambda c, a: standard_query_changes(
                mailboxes, mailbox_query, settings, c, a),
        }
        emails, threads, query = self.emails, self.threads, self.email_query
        handlers.update({
            "Email/get": lambda c, a: standard_get(emails, settings.max_objects_in_get, c, a),
            "Email/changes": lambda c, a: standard_changes(
                emails, settings.changes_max_results, c, a),
            "Email/set": lambda c, a: standard_set(
                emails, writer, settings.max_objects_in_set, c, a),
            "Email/copy": lambda c, a: standard_copy(
                emails, writer, settings.max_objects_in_set, c, a),
            "Email/query": lambda c, a: standard_query(emails, query, settings, c, a),
            "Email/queryChanges": lambda c, a: standard_query_changes(
                emails, query, settings, c, a),
            "Email/import": lambda c, a: email_import(emails, writer, c, a),
            "Email/parse": lambda c, a: email_parse(emails, c, a),
            "Thread/get": lambda c, a: standard_get(threads, settings.max_objects_in_get, c, a),
            "Thread/changes": lambda c, a: standard_changes(
                threads, settings.changes_max_results, c, a),
            "SearchSnippet/get": lambda c, a: search_snippets(
                self._store, query, self.languages, settings.max_objects_in_get, c, a),
        })
        return {name: self._method(handler) for name, handler in handlers.items()}


def _body_part(blob_id):
    # A body part's blob id: the message's hash and the part's number.
    split = mime.split_part_blob_id(blob_id)
    if split is None:
        return None
    message_hash, part_id = split

    def extract(content):
        return mime.parse(content).part_content(part_id)

    return message_hash, extract


# The types whose states push announces for this capability.
MAIL_TYPES = (MAILBOX, EMAIL, THREAD)
