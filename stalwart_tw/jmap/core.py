"""
Methods of the core capability that belong to no data type: Core/echo and
Blob/copy, and the rule that says which account may use which blob.

Which blobs an account sees. A blob id is the BLAKE3 hex digest of the
content, so knowing it proves nothing: an account sees a blob only when the
account holds it: a C{blob_temp} row of that account (its own upload, or a
Blob/copy into it), or data of the account that references it (a message,
through a holder an extension adds). Extensions may also serve derived blob
ids (a message's body part), resolved to the blob they come from, which the
account must see. Download, Blob/copy, Email/import, Email/parse and
Email/set go through L{BlobAccess.visible}, so the rule lives here once.
A blob an account cannot see is "not found", never "forbidden": the answer
does not reveal that someone else stored the same content.

Blob/copy gives the target account its own C{blob_temp} row, with the same
lifetime a fresh upload gets, so the copy outlives the source's expiry and
each account's uploads expire independently. Copying into an account that
already holds the blob refreshes its expiry, as re-uploading would.
"""

from io import BytesIO

from twisted.internet.defer import ensureDeferred, succeed

from stalwart_tw.inflight import uncancellable
from stalwart_tw.jmap.errors import (
    ACCOUNT_NOT_FOUND,
    FROM_ACCOUNT_NOT_FOUND,
    NOT_FOUND,
    REQUEST_TOO_LARGE,
    MethodError,
    invalid_arguments,
)
from stalwart_tw.jmap.server import Extension
from stalwart_tw.jmap.session import CORE_CAPABILITY, account_id, account_number
from stalwart_tw.logs import Logger
from stalwart_tw.store.blobs import held_by, is_blob_hash, temporary_rows
from stalwart_tw.store.errors import BlobMissing

_COPY_ARGUMENTS = {"fromAccountId", "accountId", "blobIds"}

log = Logger()


def echo(context, arguments):
    """
    Core/echo: answer with exactly the arguments given (RFC 8620 section 4).
    """
    return arguments


class CoreExtension(Extension):
    """
    The core capability (urn:ietf:params:jmap:core): Core/echo, and
    Blob/copy when the node stores blobs. Its Session object is built from
    the settings by the Session itself.

    @param blobs: the L{BlobAccess}, or C{None}.
    """

    capability = CORE_CAPABILITY

    def __init__(self, blobs=None):
        self._blobs = blobs

    def methods(self):
        methods = {"Core/echo": echo}
        if self._blobs is not None:
            methods["Blob/copy"] = self._blobs.copy
        return methods


def _visible(connection, holders, account, principal_id, blob_hashes, now):
    found = held_by(connection, account, principal_id, blob_hashes, now)
    for holder in holders:
        if found >= blob_hashes:
            break
        found |= holder(connection, account, blob_hashes - found)
    return found


class BlobAccess:
    """
    Which account may use which blob; uploads, downloads and Blob/copy.

    @param blobs: the node's L{BlobStore}.
    @param store: the L{Store} read for C{blob_temp} rows.
    @param writer: the L{AccountWriter} copies are committed through.
    @param clock: the IReactorTime that expiry is computed from (the blob
        store's clock, so that its purge agrees).
    @param max_blobs: the most blob ids one Blob/copy takes (maxObjectsInSet).
    """

    def __init__(self, blobs, store, writer, clock, max_blobs):
        self._blobs = blobs
        self._store = store
        self._writer = writer
        self._clock = clock
        self._max_blobs = max_blobs
        self._holders = []
        self._derivers = []

    def add_holder(self, holder):
        """
        Let an extension's data make blobs visible: C{holder(connection,
        account, blob_hashes)} returns those of C{blob_hashes} that the
        account's data references (a message's bytes), run on a reader
        thread alongside the check of uploads.
        """
        self._holders.append(holder)

    def add_deriver(self, deriver):
        """
        Let an extension serve blob ids of its own that stand for part of
        another blob (a body part of a message): C{deriver(blob_id)}
        returns C{None} for an id it does not know, else C{(blob hash,
        extract)} where C{extract(content) -> bytes or None} (run on a
        thread) gives the derived blob from the whole one.
        """
        self._derivers.append(deriver)

    def _derive(self, blob_id):
        for deriver in self._derivers:
            found = deriver(blob_id)
            if found is not None:
                return found
        return None

    async def upload(self, account, source, uploader):
        """
        Store an upload to C{account} by C{uploader}, visible to them alone
        until data references it.

        @param source: the bytes, or a binary file read from its start.
        @return: C{(blob id, size)}.
        """
        blob_hash, size, _ = await self._blobs.put_temporary(account, source, uploader)
        return blob_hash, size

    async def open_visible(self, account, principal_id, blob_id):
        """
        @return: C{(binary file, size)} of a blob the principal can see in
            the account.
        @raise BlobMissing: for a malformed id, a blob this principal does
            not hold in the account, or one whose file is gone: all the
            same to the client.
        """
        if not is_blob_hash(blob_id):
            content = await self.read_visible(account, principal_id, blob_id)
            return BytesIO(content), len(content)
        if blob_id not in await self.visible(account, principal_id, [blob_id]):
            raise BlobMissing(blob_id)
        return await self._blobs.open(blob_id)

    async def read_visible(self, account, principal_id, blob_id):
        """
        @return: the content of a blob (or derived blob) the principal can
            see in the account, read whole: for what is parsed anyway.
        @raise BlobMissing: as for L{open_visible}.
        """
        derived = None if is_blob_hash(blob_id) else self._derive(blob_id)
        blob_hash = blob_id if derived is None else derived[0]
        if not is_blob_hash(blob_hash) or blob_hash not in await self.visible(
            account, principal_id, [blob_hash]
        ):
            raise BlobMissing(blob_id)
        content = await self._blobs.read(blob_hash)
        if derived is None:
            return content
        extracted = await self._blobs.in_thread(derived[1], content)
        if extracted is None:
            raise BlobMissing(blob_id)
        return extracted

    def visible(self, account, principal_id, blob_hashes):
        """
        @param account: the account's principal id.
        @param principal_id: who is looking.
        @param blob_hashes: blob ids, each already checked by C{is_blob_hash}.
        @return: a Deferred firing with the set of those the principal can
            see in the account.
        """
        if not blob_hashes:
            return succeed(set())
        return self._store.read(
            _visible, self._holders, account, principal_id, set(blob_hashes),
            int(self._clock.seconds()),
        )

    async def copy(self, context, arguments):
        """
        Blob/copy (RFC 8620 section 6.3).
        """
        from_text, to_text, blob_ids = self._check_copy_arguments(arguments)
        accounts = context.accounts
        target, source = account_number(to_text), account_number(from_text)
        if target not in accounts:
            raise MethodError(ACCOUNT_NOT_FOUND, f"no account {to_text!r}")
        if source not in accounts:
            raise MethodError(FROM_ACCOUNT_NOT_FOUND, f"no account {from_text!r}")
        wanted = [blob_id for blob_id in dict.fromkeys(blob_ids) if is_blob_hash(blob_id)]
        caller = context.principal.id
        visible = await self.visible(source, caller, wanted)
        # A derived blob (a message's body part) becomes a blob of its own
        # in the target account: the copy's id is its content's hash.
        derived = {}
        try:
            for blob_id in dict.fromkeys(blob_ids):
                if is_blob_hash(blob_id) or self._derive(blob_id) is None:
                    continue
                try:
                    content = await self.read_visible(source, caller, blob_id)
                except BlobMissing:
                    continue
                derived[blob_id], _ = await self._blobs.put(content)
            held = await uncancellable(ensureDeferred(
                self._grant_held(target, caller, visible | set(derived.values()))))
        finally:
            for blob_hash in derived.values():
                self._blobs.release_in_flight(blob_hash)
        new_ids = {blob_id: derived.get(blob_id, blob_id) for blob_id in blob_ids}
        not_found = {"type": NOT_FOUND, "description": "no such blob in the source account"}
        copied = {blob_id: new_ids[blob_id] for blob_id in blob_ids if new_ids[blob_id] in held}
        not_copied = {blob_id: dict(not_found) for blob_id in blob_ids if blob_id not in copied}
        return {
            "fromAccountId": account_id(source),
            "accountId": account_id(target),
            "copied": copied or None,
            "notCopied": not_copied or None,
        }

    def _check_copy_arguments(self, arguments):
        unknown = set(arguments) - _COPY_ARGUMENTS
        if unknown:
            raise invalid_arguments(f"unknown arguments: {', '.join(sorted(unknown))}")
        from_text, to_text = arguments.get("fromAccountId"), arguments.get("accountId")
        blob_ids = arguments.get("blobIds")
        if not isinstance(from_text, str) or not isinstance(to_text, str):
            raise invalid_arguments("fromAccountId and accountId must be account ids")
        if not isinstance(blob_ids, list) or not all(isinstance(b, str) for b in blob_ids):
            raise invalid_arguments("blobIds must be a list of blob ids")
        if len(blob_ids) > self._max_blobs:
            raise MethodError(
                REQUEST_TOO_LARGE, f"at most {self._max_blobs} blobs may be copied at once"
            )
        return from_text, to_text, blob_ids

    async def _grant_held(self, account, principal_id, blob_hashes):
        # In flight from before the commit until after it: the source's row
        # may expire meanwhile, and nothing else keeps the file alive.
        held = set()
        try:
            for blob_hash in sorted(blob_hashes):
                try:
                    self._blobs.hold(blob_hash)
                except BlobMissing:
                    continue
                held.add(blob_hash)
            if held:
                expires_at = int(self._clock.seconds()) + self._blobs.temp_ttl
                await self._writer.commit(temporary_rows(account, principal_id, held, expires_at))
        finally:
            for blob_hash in held:
                self._blobs.release_in_flight(blob_hash)
        return held
