"""
Email (RFC 8621 section 4): /get, /changes, /set, /copy, /import and
/parse (/query and /queryChanges are in query.py).

A message's bytes are its blob, stored as received; its MIME structure
(with byte offsets), convenience headers and preview were worked out once
when it arrived (parsing.py, ingest.py), so /get of the fast properties
reads rows alone, and a body value decodes just the bytes of its part.

Choices:
- Duplicates are allowed: importing the same message twice makes two
  Emails with their own ids and mutable properties (as the RFC permits).
- A blob that is no message at all (no header field can be read from it)
  is refused as C{invalidEmail}; anything with a header is imported
  as it is, never rewritten, so the blobId stays the client's.
- Email/import takes at most C{mail-import-max-items} emails, Email/parse
  C{mail-parse-max-items} blobs (more is C{requestTooLarge}); a message
  over C{mail-max-size} is C{tooLarge}, one whose attachments exceed
  C{mail-attachments-max-size} too, and one that would take the account
  past its principal's quota C{overQuota}.
- The Email state covers messages, keywords and mailbox memberships; the
  Thread and Mailbox states move with the changes that concern them.
"""

import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone

import msgpack
from twisted.internet.defer import DeferredList, ensureDeferred
from stalwart_tw.logs import Logger
from stalwart_tw.jmap.errors import REQUEST_TOO_LARGE, MethodError, invalid_arguments
from stalwart_tw.jmap.session import account_id
from stalwart_tw.jmap.standard import (
    SetError,
    SetCall,
    WritableType,
    check_arguments,
    check_boolean,
    check_whole_number,
    optional_string,
    require_account,
    require_writable,
    type_arguments,
)
from stalwart_tw.mail import messages, mime
from stalwart_tw.mail.ingest import copy_email, create_email
from stalwart_tw.mail.parsing import ingest, ingest_file
from stalwart_tw.mail.keywords import KeywordError, check_keyword_set
from stalwart_tw.mail.mailbox import mailbox_number
from stalwart_tw.mail.messages import email_id, email_number, mailbox_id, thread_id
from stalwart_tw.mail.query import parse_utc_date, utc_date
from stalwart_tw.store.changes import changes_since, encode_state, type_modseq
from stalwart_tw.store.draft import Draft
from stalwart_tw.store.blobs import is_blob_hash
from stalwart_tw.store.errors import BlobMissing
from stalwart_tw.store.mail_sql import EMAIL, account_usage, email_rows, principal_quota

METADATA = ("id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt")
CONVENIENCE = ("messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc",
               "replyTo", "subject", "sentAt")
BODY = ("headers", "bodyStructure", "bodyValues", "textBody", "htmlBody", "attachments",
        "hasAttachment", "preview")
# RFC 8621 section 4.2: what /get returns without a properties argument.
DEFAULT_GET = ("id", "blobId", "threadId", "mailboxIds", "keywords", "size", "receivedAt",
               "messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc",
               "replyTo", "subject", "sentAt", "hasAttachment", "preview", "bodyValues",
               "textBody", "htmlBody", "attachments")
# RFC 8621 section 4.9.
DEFAULT_PARSE = DEFAULT_GET[7:]
# What /get finds in the rows, without reading the message.
_FROM_ROWS = frozenset({*METADATA, *CONVENIENCE, "hasAttachment", "preview"})
MUTABLE = frozenset({"mailboxIds", "keywords"})
# What a client may give to Email/set create besides the message itself.
_METADATA_SET = frozenset({"mailboxIds", "keywords", "receivedAt"})
log = Logger()

# Where the Message-IDs this server makes up come from (no DNS lookup).
MESSAGE_ID_DOMAIN = platform.node() or "localhost"
# Neither given on create nor copied.
SERVER_SET = frozenset({"id", "blobId", "threadId", "size"})


def _body_arguments():
    def body_properties(value):
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError("must be an array of EmailBodyPart property names")
        for name in value:
            if name.startswith("header:"):
                mime.parse_header_property(name)
            elif name not in mime.BODY_PART_PROPERTIES:
                raise ValueError(f"names no EmailBodyPart property {name!r}")
        return value

    return {
        "bodyProperties": body_properties,
        "fetchTextBodyValues": check_boolean,
        "fetchHTMLBodyValues": check_boolean,
        "fetchAllBodyValues": check_boolean,
        "maxBodyValueBytes": check_whole_number,
    }


@dataclass
class BodyOptions:
    """
    How a /get or /parse shows bodies.
    """

    properties: list = None
    text: bool = False
    html: bool = False
    every: bool = False
    max_bytes: int = 0

    @classmethod
    def of(cls, extra):
        return cls(
            extra.get("bodyProperties"), extra.get("fetchTextBodyValues", False),
            extra.get("fetchHTMLBodyValues", False), extra.get("fetchAllBodyValues", False),
            extra.get("maxBodyValueBytes", 0),
        )


def _leaves(part):
    if part.get("subParts") is None:
        yield part
        return
    for child in part["subParts"]:
        yield from _leaves(child)


def body_properties_of(view, wanted, options):
    """
    @return: the properties in C{wanted} that come from the message's
        bytes: headers, header:* forms, the body parts and values.
    """
    found = {}
    body = options.properties
    for name in wanted:
        if name == "headers":
            found[name] = view.headers()
        elif name.startswith("header:"):
            header, form, every = mime.parse_header_property(name)
            found[name] = view.header(header, form, every)
        elif name == "bodyStructure":
            found[name] = view.body_structure(body)
        elif name == "textBody":
            found[name] = view.text_body(body)
        elif name == "htmlBody":
            found[name] = view.html_body(body)
        elif name == "attachments":
            found[name] = view.attachments(body)
    if "bodyValues" in wanted:
        parts = []
        if options.text:
            parts += view.text_body(["partId", "type"])
        if options.html:
            parts += view.html_body(["partId", "type"])
        if options.every:
            parts += list(_leaves(view.body_structure(["partId", "type"])))
        values = {}
        for part in parts:
            if part["type"].startswith("text/") and part["partId"] not in values:
                values[part["partId"]] = view.body_value(part["partId"], options.max_bytes)
        found["bodyValues"] = values
    return found


def _needs_bytes(wanted):
    return any(name not in _FROM_ROWS for name in wanted)


def _as_jmap(row, wanted, options, read_raw):
    envelope = msgpack.unpackb(row["envelope"])
    found = {
        "id": email_id(row["id"]),
        "blobId": row["blob_hash"],
        "threadId": thread_id(row["thread_id"]),
        "mailboxIds": {mailbox_id(number): True for number in row["mailboxes"]},
        "keywords": dict.fromkeys(row["keywords"], True),
        "size": row["size"],
        "receivedAt": utc_date(row["received_at"]),
        "hasAttachment": bool(row["has_attachment"]),
        "preview": row["preview"],
    }
    found.update((name, envelope.get(name)) for name in CONVENIENCE)
    if _needs_bytes(wanted):
        try:
            raw = read_raw(row["blob_hash"])
        except BlobMissing:
            # The bytes are gone from this node's disk (never on a healthy
            # one): what depends on them is null, and the log says so.
            log.error("the blob {blob} of email {email} in account {account} is missing",
                      blob=row["blob_hash"], email=email_id(row["id"]), account=row["account_id"])
            found.update((name, None) for name in wanted if name not in _FROM_ROWS)
        else:
            view = mime.MessageView(raw, msgpack.unpackb(row["layout"]), row["blob_hash"])
            found.update(body_properties_of(view, wanted, options))
    return found


def _read(connection, account, numbers, wanted, options, read_raw):
    modseq = type_modseq(connection, account, EMAIL)
    rows = email_rows(connection, account, numbers)
    return modseq, {
        email_id(number): _as_jmap(row, wanted, options, read_raw)
        for number, row in rows.items()
    }


@dataclass
class _Prepared:
    # What Email/set and /import prepared on the reactor for the build:
    # creation id -> Ingested or SetError, and the blobs held in flight.
    messages: dict = field(default_factory=dict)
    held: list = field(default_factory=list)
    usage: int = 0


class EmailType(WritableType):
    """
    The Email data type.

    @param store: the L{Store}.
    @param blobs: the L{BlobStore} messages are stored in.
    @param blob_access: the L{BlobAccess} that says which blobs an
        account may use.
    @param settings: the node's settings.
    @param in_thread: C{in_thread(function, *args)} -> Deferred, for the
        CPU work of parsing and building messages.
    @param clock: the IReactorTime receivedAt defaults to.
    """

    name = EMAIL
    properties = frozenset({*METADATA, *CONVENIENCE, *BODY})
    default_properties = DEFAULT_GET
    server_set = SERVER_SET
    arguments = {
        "get": _body_arguments(),
        "parse": _body_arguments(),
        "query": {"collapseThreads": check_boolean},
        "queryChanges": {"collapseThreads": check_boolean},
    }

    def __init__(self, store, blobs, blob_access, settings, in_thread, parse, clock):
        self._store = store
        self._blobs = blobs
        self._blob_access = blob_access
        self._settings = settings
        self._in_thread = in_thread
        # Runs ingest (a pure function of bytes) in a parsing process.
        self._parse = parse
        self._clock = clock

    def check_properties(self, properties):
        for name in properties:
            if name.startswith("header:"):
                try:
                    mime.parse_header_property(name)
                except ValueError as error:
                    raise invalid_arguments(str(error)) from None
            elif name not in self.properties:
                raise invalid_arguments(f"Email has no property {name!r}")

    def _read_raw(self, blob_hash):
        return self._blobs.read_now(blob_hash)

    async def read(self, context, account, ids, properties=None, extra=None):
        return (await self.read_with_state(context, account, ids, properties, extra))[1]

    async def read_with_state(self, context, account, ids, properties=None, extra=None):
        numbers = None if ids is None else {email_number(i) for i in ids} - {None}
        wanted = frozenset(DEFAULT_GET if properties is None else properties)
        options = BodyOptions.of(extra or {})
        return await self._store.read(_read, account, numbers, wanted, options, self._read_raw)

    def modseq(self, context, account):
        return self._store.read(type_modseq, account, EMAIL)

    def changes(self, context, account, since, max_changes, extra=None):
        return self._store.read(changes_since, account, EMAIL, since, max_changes)

    # Writing.

    def read_drafted(self, draft, call, account, ids):
        found = {}
        for object_id in ids:
            number = email_number(object_id)
            row = None if number is None else messages.email_row(draft, account, number)
            if row is None:
                continue
            found[object_id] = {
                "id": object_id,
                "blobId": row["blob_hash"],
                "threadId": thread_id(row["thread_id"]),
                "size": row["size"],
                "receivedAt": utc_date(row["received_at"]),
                "mailboxIds": {
                    mailbox_id(n): True for n in sorted(messages.mailboxes_of(draft, account, number))
                },
                "keywords": dict.fromkeys(sorted(messages.keywords_of(draft, account, number)), True),
            }
        return found

    async def prepare(self, context, account, request, extra):
        prepared = _Prepared()
        try:
            for creation_id, properties in request.create.items():
                if "id" in properties:
                    # A /copy names its original (nothing to build); a /set
                    # create may not name an id (refused when built).
                    continue
                try:
                    prepared.messages[creation_id] = await self._build_message(
                        context, account, properties, prepared
                    )
                except SetError as error:
                    prepared.messages[creation_id] = error
        except BaseException:
            self.release(prepared)
            raise
        return prepared

    def normalise_patch(self, patch):
        if not isinstance(patch, dict):
            return patch
        return {
            path.lower() if path.startswith("keywords/") else path: value
            for path, value in patch.items()
        }

    def release(self, prepared):
        for blob_hash in prepared.held:
            self._blobs.release_in_flight(blob_hash)
        prepared.held.clear()

    async def _build_message(self, context, account, properties, prepared):
        given = {name: value for name, value in properties.items() if name not in _METADATA_SET}
        if "headers" in given:
            raise SetError("invalidProperties", "'headers' cannot be given: set each header "
                           "field as a property of its own", ["headers"])
        wanted_blobs = sorted(set(_blob_ids(given)))
        contents = {}
        for blob_id in wanted_blobs:
            try:
                contents[blob_id] = await self._blob_access.read_visible(
                    account, context.principal.id, blob_id
                )
            except BlobMissing:
                # Left out: build() names it in blobNotFound.
                continue
        now = datetime.fromtimestamp(self._clock.seconds(), timezone.utc)
        try:
            raw = await self._in_thread(
                mime.build, given, contents.get, MESSAGE_ID_DOMAIN, now
            )
        except mime.BuildError as error:
            if error.blob_not_found:
                raise SetError("blobNotFound", error.description,
                               extra={"notFound": list(error.blob_not_found)}) from None
            raise SetError("invalidProperties", error.description, error.properties) from None
        self._check_size(len(raw))
        blob_hash, _ = await self._blobs.put(raw)
        prepared.held.append(blob_hash)
        return await self._parse(ingest, raw, blob_hash, self._settings.default_language)

    def _check_size(self, size):
        if size > self._settings.mail_max_size:
            raise SetError(
                "tooLarge", f"a message holds at most {self._settings.mail_max_size} bytes"
            )

    def build_create(self, draft, call, creation_id, properties):
        if call.copy_of is not None:
            return self._build_copy(draft, call, properties)
        ingested = call.prepared.messages.get(creation_id)
        if isinstance(ingested, SetError):
            raise ingested
        if "id" in properties or set(properties) & (SERVER_SET - {"id"}):
            wrong = sorted(set(properties) & SERVER_SET)
            raise SetError("invalidProperties", f"{wrong[0]!r} is set by the server", wrong)
        mailboxes, keywords = self._check_metadata(draft, call, properties)
        received_at = self._received_at(properties, None)
        self._check_limits(draft, call, ingested)
        number, thread = create_email(draft, call.account, ingested, mailboxes, keywords, received_at)
        return {"id": email_id(number), "blobId": ingested.blob_hash,
                "threadId": thread_id(thread), "size": ingested.size}

    def _build_copy(self, draft, call, properties):
        source, original = call.copy_of
        unknown = sorted(set(properties) - _METADATA_SET)
        if unknown:
            raise SetError("invalidProperties", f"a copy cannot set {unknown[0]!r}", unknown)
        if properties.get("mailboxIds") is original.get("mailboxIds"):
            # The original's mailboxes are another account's.
            raise SetError("invalidProperties", "a copy must give its mailboxIds",
                           ["mailboxIds"])
        mailboxes, keywords = self._check_metadata(draft, call, properties)
        received_at = self._received_at(properties, None)
        row = messages.email_row(draft, source, email_number(original["id"]))
        usage = self._drafted_usage(draft, call) + row["size"]
        self._check_quota(draft, call, usage)
        number, thread = copy_email(draft, source, row, call.account, mailboxes, keywords,
                                    received_at)
        return {"id": email_id(number), "blobId": row["blob_hash"], "threadId": thread_id(thread),
                "size": row["size"]}

    def _received_at(self, properties, default):
        given = properties.get("receivedAt")
        if given is None:
            return default if default is not None else int(self._clock.seconds())
        try:
            return parse_utc_date(given)
        except ValueError as error:
            raise SetError("invalidProperties", f"'receivedAt' {error}", ["receivedAt"]) from None

    def _check_metadata(self, draft, call, properties):
        mailboxes = self._check_mailboxes(draft, call, properties.get("mailboxIds"))
        try:
            keywords = check_keyword_set(properties.get("keywords", {}))
        except KeywordError as error:
            raise SetError("invalidProperties", f"'keywords' {error}", ["keywords"]) from None
        return mailboxes, keywords

    def _check_mailboxes(self, draft, call, given):
        if not isinstance(given, dict) or not given:
            raise SetError("invalidProperties", "'mailboxIds' must name at least one mailbox",
                           ["mailboxIds"])
        numbers = set()
        for key, flag in given.items():
            if flag is not True:
                raise SetError("invalidProperties", "'mailboxIds' maps each id to true",
                               ["mailboxIds"])
            try:
                number = mailbox_number(call.resolve_id(key))
            except SetError:
                number = None
            if number is None or draft.first("mailboxes", account_id=call.account, id=number) is None:
                raise SetError("invalidProperties", f"no mailbox {key!r}", ["mailboxIds"])
            numbers.add(number)
        return numbers

    def _drafted_usage(self, draft, call):
        # Bytes the account holds as of the read (read once per build),
        # plus what this call added.
        stored = _once(draft, "usage", account_usage, call.account)
        for op in draft.batch.operations_on("emails"):
            if op[0] == "i" and op[2]["account_id"] == call.account:
                stored += op[2]["size"]
        return stored

    def _check_quota(self, draft, call, usage):
        quota = _once(draft, "quota", principal_quota, call.account)
        if quota and usage > quota:
            raise SetError("overQuota", f"the account's quota is {quota} bytes")

    def _check_limits(self, draft, call, ingested):
        self._check_size(ingested.size)
        if ingested.attachments_size > self._settings.mail_attachments_max_size:
            raise SetError(
                "tooLarge",
                f"attachments hold at most {self._settings.mail_attachments_max_size} bytes",
            )
        self._check_quota(draft, call, self._drafted_usage(draft, call) + ingested.size)

    def build_update(self, draft, call, object_id, current, patched):
        changed = sorted(
            name for name in set(current) | set(patched)
            if name not in MUTABLE and current.get(name) != patched.get(name)
        )
        if changed:
            raise SetError("invalidProperties", f"{changed[0]!r} cannot change", changed)
        mailboxes, keywords = self._check_metadata(draft, call, patched)
        row = messages.email_row(draft, call.account, email_number(object_id))
        # current is as the draft stood an instant ago, in this call.
        messages.set_mailboxes(draft, call.account, row, mailboxes, {
            mailbox_number(key) for key in current["mailboxIds"]})
        messages.set_keywords(draft, call.account, row, keywords, set(current["keywords"]))
        return None

    def build_destroy(self, draft, call, object_id, current):
        row = messages.email_row(draft, call.account, email_number(object_id))
        messages.destroy_email(draft, call.account, row)


def _once(draft, name, read, account):
    # A value of the stored state, read once per build: the read
    # transaction does not move while the batch is built.
    cache = draft.__dict__.setdefault("_mail_once", {})
    if name not in cache:
        cache[name] = read(draft.connection, account)
    return cache[name]


def _blob_ids(value):
    # Every blobId an Email/set create names in its body parts.
    if isinstance(value, dict):
        blob_id = value.get("blobId")
        if isinstance(blob_id, str):
            yield blob_id
        for item in value.values():
            if isinstance(item, (dict, list)):
                yield from _blob_ids(item)
    elif isinstance(value, list):
        for item in value:
            yield from _blob_ids(item)


IMPORT_ARGUMENTS = frozenset({"accountId", "ifInState", "emails"})
PARSE_ARGUMENTS = frozenset({"accountId", "blobIds", "properties", *_body_arguments()})


async def email_import(emails, writer, context, arguments):
    """
    Email/import (RFC 8621 section 4.8): uploaded blobs become Emails, each
    on its own (a refused one is in C{notCreated}), all in one batch.
    """
    check_arguments(arguments, IMPORT_ARGUMENTS)
    account = require_account(context, arguments)
    require_writable(context, account)
    if_in_state = optional_string(arguments, "ifInState", "a state string")
    given = arguments.get("emails")
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        raise invalid_arguments("'emails' must be a map of creation ids to EmailImport objects")
    limit = emails._settings.mail_import_max_items
    if len(given) > limit:
        raise MethodError(REQUEST_TOO_LARGE, f"{len(given)} emails; at most {limit} per import")
    prepared = _Prepared()
    try:
        # One visibility check for every blob, then each message read and
        # parsed in one go on a worker thread, all at once.
        named = [item.get("blobId") for item in given.values()]
        visible = await emails._blob_access.visible(
            account, context.principal.id, {b for b in named if is_blob_hash(b)})
        # Every one is waited for, so that all holds are known to release.
        outcomes = await DeferredList([
            ensureDeferred(_import_one(emails, context, account, item, prepared, visible))
            for item in given.values()
        ], consumeErrors=True)
        for creation_id, (succeeded, outcome) in zip(given, outcomes):
            if not succeeded:
                outcome.raiseException()
            prepared.messages[creation_id] = outcome
        written = await writer.write(
            account, _build_import, emails, context, account, given, prepared, if_in_state
        )
    finally:
        emails.release(prepared)
    old_modseq, created, refused, created_ids = written.outcome
    context.created_ids.update(created_ids)
    return {
        "accountId": account_id(account),
        "oldState": encode_state(old_modseq),
        "newState": encode_state(written.type_modseq(account, EMAIL, old_modseq)),
        "created": created or None,
        "notCreated": refused or None,
    }


_IMPORT_MEMBERS = frozenset({"blobId", "mailboxIds", "keywords", "receivedAt"})


async def _import_one(emails, context, account, item, prepared, visible):
    """
    @return: the L{Ingested} message, or the L{SetError} that refuses it.
    """
    try:
        unknown = sorted(set(item) - _IMPORT_MEMBERS)
        if unknown:
            raise SetError("invalidProperties", f"an EmailImport has no {unknown[0]!r}", unknown)
        blob_id = item.get("blobId")
        if not isinstance(blob_id, str):
            raise SetError("invalidProperties", "'blobId' must be a blob id", ["blobId"])
        language = emails._settings.default_language
        if blob_id in visible:
            path = await emails._in_thread(_hold, emails, blob_id)
            if isinstance(path, SetError):
                raise path
            # Held once (by the hold or the put), released once.
            prepared.held.append(blob_id)
            ingested = await emails._parse(ingest_file, path, blob_id, language)
        else:
            # A derived blob (a part of another message) becomes a blob of its own.
            try:
                raw = await emails._blob_access.read_visible(account, context.principal.id, blob_id)
            except BlobMissing:
                raise SetError("blobNotFound", f"no blob {blob_id!r} in this account") from None
            emails._check_size(len(raw))
            blob_hash, _ = await emails._blobs.put(raw)
            prepared.held.append(blob_hash)
            ingested = await emails._parse(ingest, raw, blob_hash, language)
        if not ingested.header_count:
            raise SetError("invalidEmail", "the blob is no message: it has no header field")
        return ingested
    except SetError as error:
        return error


def _hold(emails, blob_hash):
    # On a worker thread: keep the upload's file while the batch is built;
    # too large a message is refused before it is parsed.
    # @return: the file's path, or the SetError that refuses it.
    missing = SetError("blobNotFound", f"no blob {blob_hash!r} in this account")
    try:
        emails._blobs.hold(blob_hash)
    except BlobMissing:
        return missing
    try:
        path = emails._blobs.path_for(blob_hash)
        emails._check_size(os.path.getsize(path))
    except (OSError, BlobMissing, SetError) as error:
        emails._blobs.release_in_flight(blob_hash)
        return error if isinstance(error, SetError) else missing
    return path


def _build_import(connection, batch, emails, context, account, given, prepared, if_in_state):
    old_modseq = type_modseq(connection, account, EMAIL)
    if if_in_state is not None and if_in_state != encode_state(old_modseq):
        raise MethodError("stateMismatch", "the state is no longer the one given in ifInState")
    draft = Draft(connection, batch)
    call = SetCall(context, account)
    created, refused, created_ids = {}, {}, {}
    for creation_id, item in given.items():
        try:
            ingested = prepared.messages[creation_id]
            if isinstance(ingested, SetError):
                raise ingested
            with batch.savepoint():
                mailboxes, keywords = emails._check_metadata(draft, call, item)
                received_at = emails._received_at(item, ingested.received_at)
                emails._check_limits(draft, call, ingested)
                number, thread = create_email(draft, account, ingested, mailboxes, keywords,
                                              received_at)
        except SetError as error:
            refused[creation_id] = error.as_json()
        else:
            created[creation_id] = {"id": email_id(number), "blobId": ingested.blob_hash,
                                    "threadId": thread_id(thread), "size": ingested.size}
            created_ids[creation_id] = email_id(number)
    return old_modseq, created, refused, created_ids


async def email_parse(emails, context, arguments):
    """
    Email/parse (RFC 8621 section 4.9): blobs read as messages, without
    importing them.
    """
    check_arguments(arguments, PARSE_ARGUMENTS)
    account = require_account(context, arguments)
    blob_ids = arguments.get("blobIds")
    if not isinstance(blob_ids, list) or not all(isinstance(b, str) for b in blob_ids):
        raise invalid_arguments("'blobIds' must be an array of blob ids")
    limit = emails._settings.mail_parse_max_items
    if len(blob_ids) > limit:
        raise MethodError(REQUEST_TOO_LARGE, f"{len(blob_ids)} blobs; at most {limit} per parse")
    properties = arguments.get("properties")
    if properties is None:
        properties = list(DEFAULT_PARSE)
    elif not isinstance(properties, list) or not all(isinstance(p, str) for p in properties):
        raise invalid_arguments("'properties' must be an array of property names")
    emails.check_properties(properties)
    options = BodyOptions.of(type_arguments(emails, "parse", arguments))
    parsed, not_parsable, not_found = {}, [], []
    for blob_id in dict.fromkeys(blob_ids):
        try:
            raw = await emails._blob_access.read_visible(account, context.principal.id, blob_id)
        except BlobMissing:
            not_found.append(blob_id)
            continue
        found = await emails._in_thread(_parse_one, raw, blob_id, properties, options)
        if found is None:
            not_parsable.append(blob_id)
        else:
            parsed[blob_id] = found
    return {
        "accountId": account_id(account),
        "parsed": parsed or None,
        "notParsable": not_parsable or None,
        "notFound": not_found or None,
    }


def _parse_one(raw, blob_id, properties, options):
    view = mime.parse(raw)
    if not view.headers():
        return None
    convenience = view.convenience()
    found = {}
    for name in properties:
        if name in ("id", "mailboxIds", "keywords", "receivedAt", "threadId"):
            found[name] = None
        elif name == "blobId":
            found[name] = blob_id
        elif name == "size":
            found[name] = len(raw)
        elif name in convenience:
            found[name] = convenience[name]
        elif name == "hasAttachment":
            found[name] = view.has_attachment
        elif name == "preview":
            found[name] = view.preview
    view_blob = mime.MessageView(raw, view.layout, blob_id)
    found.update(body_properties_of(view_blob, properties, options))
    return found
