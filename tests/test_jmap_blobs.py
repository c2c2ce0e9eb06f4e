"""
Uploads, downloads and Blob/copy over real loopback HTTP against a node.

service.py does not yet hand the blob store to the web server, so setUp
builds the node's JmapHttp itself, the way service.py will, before the node
binds its port (the site is made from C{service.http} at that moment).
"""

import json
import os
from base64 import b64encode
from urllib.parse import quote

from blake3 import blake3
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from stalwart_tw.jmap.session import account_id
from tests.support import NodeServiceMixin
from tests.test_http_site import ChunkedBody

CORE = "urn:ietf:params:jmap:core"
LIMIT = "urn:ietf:params:jmap:error:limit"


def basic(name, password):
    return {b"Authorization": [b"Basic " + b64encode(f"{name}:{password}".encode())]}


JANE = basic("jane", "jane-password")
BOB = basic("bob", "bob-password")


class BlobSiteTestCase(NodeServiceMixin, TestCase):
    """
    A started node with two users, jane and bob, and a group "team" that
    jane belongs to.
    """

    settings_overrides = {}

    @defer.inlineCallbacks
    def setUp(self):
        service = yield self.start_with_client(**self.settings_overrides)
        directory = service.directory
        self.jane = yield directory.create_principal("individual", "jane", secret="jane-password")
        self.bob = yield directory.create_principal("individual", "bob", secret="bob-password")
        self.team = yield directory.create_principal("group", "team", members=["jane"])

    def upload(self, data, account=None, headers=JANE, content_type=None):
        headers = dict(headers)
        if content_type is not None:
            headers[b"Content-Type"] = [content_type]
        account = account or account_id(self.jane.id)
        return self.request("POST", f"/jmap/upload/{account}/", headers=headers, data=data)

    def download(self, blob_id, name="file", account=None, accept=None, headers=JANE):
        account = account or account_id(self.jane.id)
        path = f"/jmap/download/{account}/{blob_id}/{quote(name, safe='')}"
        if accept is not None:
            path += "?accept=" + quote(accept, safe="")
        return self.request("GET", path, headers=headers)

    @defer.inlineCallbacks
    def uploaded(self, data, account=None, headers=JANE):
        response, body = yield self.upload(data, account, headers)
        self.assertEqual(response.code, 201, body)
        return json.loads(body)["blobId"]

    @defer.inlineCallbacks
    def call(self, name, arguments, headers=JANE):
        payload = {"using": [CORE], "methodCalls": [[name, arguments, "c0"]]}
        response, body = yield self.request(
            "POST", "/jmap/", headers={**headers, b"Content-Type": [b"application/json"]},
            data=json.dumps(payload).encode(),
        )
        self.assertEqual(response.code, 200, body)
        [[answer, arguments, _]] = json.loads(body)["methodResponses"]
        return answer, arguments

    def assertNotFound(self, response, body):
        self.assertEqual(response.code, 404, body)
        self.assertEqual(self.header(response, b"Content-Type"), b"application/problem+json")
        self.assertEqual(json.loads(body)["status"], 404)


class UploadTests(BlobSiteTestCase):
    """
    POST /jmap/upload/<accountId>/ stores a blob for an account the user reaches.
    """

    @defer.inlineCallbacks
    def test_upload_answers_the_blob(self):
        """A 201 names the account, the BLAKE3 blob id, the request's type and the size."""
        data = b"hello, blobs"
        response, body = yield self.upload(data, content_type=b"text/plain; charset=utf-8")
        self.assertEqual(response.code, 201)
        self.assertEqual(json.loads(body), {
            "accountId": account_id(self.jane.id),
            "blobId": blake3(data).hexdigest(),
            "type": "text/plain; charset=utf-8",
            "size": len(data),
        })

    @defer.inlineCallbacks
    def test_disk_full(self):
        """A full disk is a 507 problem document and one log line, no traceback; then uploads work again."""
        import errno

        from stalwart_tw.store import blobs as blob_module

        def no_space(descriptor):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(blob_module, "_fsync", no_space)
        logged = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        response, body = yield self.upload(b"nowhere to go")
        self.assertEqual(response.code, 507)
        document = json.loads(body)
        self.assertEqual(document["status"], 507)
        self.assertEqual(self.flushLoggedErrors(), [])
        lines = [event for event in logged if "refused" in event.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.patch(blob_module, "_fsync", os.fsync)
        response, _ = yield self.upload(b"room again")
        self.assertEqual(response.code, 201)

    @defer.inlineCallbacks
    def test_default_type_and_no_trailing_slash(self):
        """Without a trailing slash or a Content-Type, the type is application/octet-stream."""
        response, body = yield self.request(
            "POST", f"/jmap/upload/{account_id(self.jane.id)}", headers=JANE, data=b"\x00\x01"
        )
        self.assertEqual(response.code, 201, body)
        self.assertEqual(json.loads(body)["type"], "application/octet-stream")

    @defer.inlineCallbacks
    def test_large_upload(self):
        """A body spooled to a file is stored and served back over several chunks."""
        data = os.urandom(1024 * 1024 + 7)
        blob_id = yield self.uploaded(data)
        self.assertEqual(blob_id, blake3(data).hexdigest())
        response, body = yield self.download(blob_id)
        self.assertEqual((response.code, body), (200, data))

    @defer.inlineCallbacks
    def test_group_account(self):
        """A member uploads to the account of a group it belongs to."""
        response, body = yield self.upload(b"shared", account=account_id(self.team.id))
        self.assertEqual(response.code, 201, body)
        self.assertEqual(json.loads(body)["accountId"], account_id(self.team.id))

    @defer.inlineCallbacks
    def test_needs_credentials(self):
        """Without credentials, an upload gets a 401 and the Basic challenge."""
        response, _ = yield self.upload(b"data", headers={})
        self.assertEqual(response.code, 401)
        self.assertIn(b"Basic", self.header(response, b"WWW-Authenticate"))

    @defer.inlineCallbacks
    def test_foreign_account_is_not_found(self):
        """Another user's account answers exactly as an account that does not exist."""
        foreign, foreign_body = yield self.upload(b"data", account=account_id(self.bob.id))
        missing, missing_body = yield self.upload(b"data", account=account_id(9999))
        self.assertNotFound(foreign, foreign_body)
        self.assertNotFound(missing, missing_body)
        self.assertEqual(foreign_body, missing_body)
        garbage, garbage_body = yield self.upload(b"data", account="nonsense")
        self.assertNotFound(garbage, garbage_body)


class UploadLimitTests(BlobSiteTestCase):
    """
    max-size-upload and max-concurrent-uploads hold per account.
    """

    settings_overrides = {"max-size-upload": "1000", "max-concurrent-uploads": "1"}

    @defer.inlineCallbacks
    def test_too_large(self):
        """An upload over max-size-upload is refused with limit/maxSizeUpload."""
        response, body = yield self.upload(b"x" * 1001)
        self.assertEqual(response.code, 400)
        problem = json.loads(body)
        self.assertEqual((problem["type"], problem["limit"]), (LIMIT, "maxSizeUpload"))

    @defer.inlineCallbacks
    def test_chunked_too_large(self):
        """A chunked upload that grows past max-size-upload is refused the same way."""
        response, body = yield self.upload(ChunkedBody([b"x" * 400] * 3))
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads(body)["limit"], "maxSizeUpload")

    @defer.inlineCallbacks
    def test_at_the_limit(self):
        """An upload of exactly max-size-upload bytes is stored."""
        response, body = yield self.upload(b"x" * 1000)
        self.assertEqual(response.code, 201, body)

    @defer.inlineCallbacks
    def test_concurrent_uploads(self):
        """A second upload while one is in progress gets 429 maxConcurrentUpload; others don't."""
        blobs, gate, entered = self.service.blobs, defer.Deferred(), defer.Deferred()
        original = blobs.put_temporary

        def held(account, data, uploader):
            if account != self.jane.id or entered.called:
                return original(account, data, uploader)
            entered.callback(None)
            return gate.addCallback(lambda _: original(account, data, uploader))

        self.patch(blobs, "put_temporary", held)
        first = self.upload(b"first")
        yield entered
        response, body = yield self.upload(b"second")
        self.assertEqual(response.code, 429)
        problem = json.loads(body)
        self.assertEqual((problem["type"], problem["limit"]), (LIMIT, "maxConcurrentUpload"))
        other, _ = yield self.upload(b"to the team", account=account_id(self.team.id))
        self.assertEqual(other.code, 201)
        gate.callback(None)
        response, body = yield first
        self.assertEqual(response.code, 201, body)
        response, body = yield self.upload(b"third", content_type=b"text/plain")
        self.assertEqual(response.code, 201, body)

    @defer.inlineCallbacks
    def test_client_leaves_mid_upload(self):
        """An upload whose client leaves keeps its slot until the blob is stored, then frees it."""
        http, blobs = self.service.http, self.service.blobs
        gate, stored, requests = defer.Deferred(), defer.Deferred(), []
        original_store, original_put = http._store_upload, blobs.put_temporary

        def store(request, *args):
            requests.append(request)
            return original_store(request, *args)

        def held(account, data, uploader):
            stored_blob = gate.addCallback(lambda _: original_put(account, data, uploader))
            return stored_blob.addCallback(lambda result: stored.callback(result) or result)

        self.patch(http, "_store_upload", store)
        self.patch(blobs, "put_temporary", held)
        leaving = self.upload(b"left behind")
        leaving.addErrback(lambda failure: None)
        while not requests:
            yield task.deferLater(reactor, 0.01, lambda: None)
        gone = requests[0].notifyFinish()
        leaving.cancel()
        yield self.assertFailure(gone, Exception)
        response, _ = yield self.upload(b"meanwhile")
        self.assertEqual(response.code, 429)
        gate.callback(None)
        blob_id, _, _ = yield stored
        self.assertEqual(blobs.in_flight(blob_id), 0)
        self.patch(blobs, "put_temporary", original_put)
        response, body = yield self.download(blob_id)
        self.assertEqual((response.code, body), (200, b"left behind"))
        response, _ = yield self.upload(b"afterwards")
        self.assertEqual(response.code, 201)


class HashingApartTests(BlobSiteTestCase):
    """
    Password checks run on threads of their own with a bounded queue.
    """

    @defer.inlineCallbacks
    def test_wrong_passwords_do_not_hold_downloads(self):
        """While every password check is taken, a logged-in download is served and one more login is 503 at once."""
        import threading

        data = os.urandom(300 * 1024)
        blob_id = yield self.uploaded(data)
        directory = self.service.directory
        limit = directory._max_verifications
        release = threading.Event()
        self.addCleanup(release.set)
        real_verify, real_authenticate = directory._verify, directory.authenticate

        def stuck_verify(secret_hash, password):
            release.wait(20)
            return real_verify(secret_hash, password)

        calls, all_in = [], defer.Deferred()

        def counted(login, password):
            calls.append(login)
            checking = real_authenticate(login, password)
            if len(calls) == limit:
                all_in.callback(None)
            return checking

        self.patch(directory, "_verify", stuck_verify)
        self.patch(directory, "authenticate", counted)
        wrong = basic("bob", "not-bobs-password")
        attackers = [self.upload(b"x", headers=wrong) for _ in range(limit)]
        yield all_in
        self.assertEqual(directory.verifying, limit)
        response, body = yield self.download(blob_id)
        self.assertEqual((response.code, body), (200, data))
        response, body = yield self.upload(b"x", headers=basic("bob", "another-guess"))
        self.assertEqual(response.code, 503)
        self.assertEqual(self.header(response, b"Retry-After"), b"1")
        self.assertIn("logins", json.loads(body)["detail"])
        release.set()
        answers = yield defer.gatherResults(attackers)
        self.assertEqual({response.code for response, _ in answers}, {401})


class DownloadTests(BlobSiteTestCase):
    """
    GET /jmap/download/<accountId>/<blobId>/<name> serves the blobs an account holds.
    """

    @defer.inlineCallbacks
    def test_round_trip(self):
        """The bytes come back with the asked type, as an attachment, cacheable privately."""
        data = bytes(range(256)) * 10
        blob_id = yield self.uploaded(data)
        response, body = yield self.download(blob_id, "résumé 2024.pdf", accept="application/pdf")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, data)
        self.assertEqual(self.header(response, b"Content-Type"), b"application/pdf")
        self.assertEqual(
            self.header(response, b"Content-Disposition"),
            b"attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%202024.pdf",
        )
        self.assertEqual(
            self.header(response, b"Cache-Control"), b"private, immutable, max-age=31536000"
        )
        self.assertEqual(self.header(response, b"X-Content-Type-Options"), b"nosniff")

    @defer.inlineCallbacks
    def test_client_leaves_mid_download(self):
        """A client that hangs up mid-download ends the stream cleanly; the next one gets it all."""
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol

        data = os.urandom(8 * 1024 * 1024)
        blob_id = yield self.uploaded(data)
        heard = defer.Deferred()

        class HangsUp(Protocol):
            def dataReceived(self, chunk):
                if not heard.called:
                    heard.callback(chunk)
                    self.transport.abortConnection()

        port = self.service.ports["JMAP"].getHost().port
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), HangsUp())
        path = f"/jmap/download/{account_id(self.jane.id)}/{blob_id}/f"
        client.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Authorization: " + JANE[b"Authorization"][0] + b"\r\n\r\n"
        )
        self.assertTrue((yield heard).startswith(b"HTTP/1.1 200"))
        response, body = yield self.download(blob_id)
        self.assertEqual((response.code, body == data), (200, True))

    @defer.inlineCallbacks
    def test_hostile_names(self):
        """Quotes, semicolons, CR LF and slashes in a name are percent-encoded, never raw."""
        blob_id = yield self.uploaded(b"data")
        name = 'a "quoted"; name\r\nX-Evil: 1/b.txt'
        response, _ = yield self.download(blob_id, name)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            self.header(response, b"Content-Disposition"),
            b"attachment; filename*=UTF-8''a%20%22quoted%22%3B%20name%0D%0AX-Evil%3A%201%2Fb.txt",
        )
        self.assertIsNone(self.header(response, b"X-Evil"))

    @defer.inlineCallbacks
    def test_bad_accept(self):
        """An accept that is not type/subtype, or none at all, gives application/octet-stream."""
        blob_id = yield self.uploaded(b"data")
        for accept in ("text/html\r\nX-Evil: 1", "nonsense", "text/plain; charset=x", None):
            response, _ = yield self.download(blob_id, accept=accept)
            self.assertEqual(response.code, 200)
            self.assertEqual(
                self.header(response, b"Content-Type"), b"application/octet-stream", accept
            )

    @defer.inlineCallbacks
    def test_needs_credentials(self):
        """Without credentials, a download gets a 401 and the Basic challenge."""
        blob_id = yield self.uploaded(b"data")
        response, _ = yield self.download(blob_id, headers={})
        self.assertEqual(response.code, 401)
        self.assertIn(b"Basic", self.header(response, b"WWW-Authenticate"))

    @defer.inlineCallbacks
    def test_other_accounts_blob(self):
        """A blob another account uploaded is not found, through either account id."""
        blob_id = yield self.uploaded(b"bob's secret", account=account_id(self.bob.id), headers=BOB)
        own, own_body = yield self.download(blob_id)
        theirs, theirs_body = yield self.download(blob_id, account=account_id(self.bob.id))
        self.assertNotFound(own, own_body)
        self.assertNotFound(theirs, theirs_body)
        mine, _ = yield self.download(blob_id, account=account_id(self.bob.id), headers=BOB)
        self.assertEqual(mine.code, 200)

    @defer.inlineCallbacks
    def test_malformed_blob_id(self):
        """A blob id that is no BLAKE3 hex digest is not found."""
        blob_id = yield self.uploaded(b"data")
        for bad in ("nothex", blob_id.upper(), blob_id[:-1], "..%2F..%2Fetc"):
            response, body = yield self.download(bad)
            self.assertNotFound(response, body)

    @defer.inlineCallbacks
    def test_file_gone(self):
        """A blob whose file is gone from this node is not found, not a server error."""
        blob_id = yield self.uploaded(b"soon gone")
        os.unlink(self.service.blobs.path_for(blob_id))
        response, body = yield self.download(blob_id)
        self.assertNotFound(response, body)

    @defer.inlineCallbacks
    def test_group_members_share(self):
        """A blob uploaded to the group's account is downloaded by the group's member only."""
        blob_id = yield self.uploaded(b"team notes", account=account_id(self.team.id))
        response, body = yield self.download(blob_id, account=account_id(self.team.id))
        self.assertEqual((response.code, body), (200, b"team notes"))
        response, body = yield self.download(
            blob_id, account=account_id(self.team.id), headers=BOB
        )
        self.assertNotFound(response, body)


    @defer.inlineCallbacks
    def test_upload_private_to_its_uploader(self):
        """In a shared account, an unreferenced upload is another member's 404 (RFC 8620 6.1)."""
        yield self.service.directory.add_member("team", "bob")
        team = account_id(self.team.id)
        blob_id = yield self.uploaded(b"jane's draft", account=team)
        response, body = yield self.download(blob_id, account=team, headers=BOB)
        self.assertNotFound(response, body)
        response, body = yield self.download(blob_id, account=team)
        self.assertEqual((response.code, body), (200, b"jane's draft"))


class BlobCopyTests(BlobSiteTestCase):
    """
    Blob/copy gives another account the user reaches its own hold on blobs.
    """

    @defer.inlineCallbacks
    def test_copy_to_group(self):
        """A copied blob is downloadable from the target account; nothing stays in flight."""
        blob_id = yield self.uploaded(b"for the team")
        team = account_id(self.team.id)
        before, _ = yield self.download(blob_id, account=team)
        self.assertEqual(before.code, 404)
        name, arguments = yield self.call("Blob/copy", {
            "fromAccountId": account_id(self.jane.id), "accountId": team, "blobIds": [blob_id],
        })
        self.assertEqual((name, arguments), ("Blob/copy", {
            "fromAccountId": account_id(self.jane.id),
            "accountId": team,
            "copied": {blob_id: blob_id},
            "notCopied": None,
        }))
        response, body = yield self.download(blob_id, account=team)
        self.assertEqual((response.code, body), (200, b"for the team"))
        self.assertEqual(self.service.blobs.in_flight(blob_id), 0)

    @defer.inlineCallbacks
    def test_copy_from_group(self):
        """A member copies a blob of the group's account into its own."""
        blob_id = yield self.uploaded(b"from the team", account=account_id(self.team.id))
        _, arguments = yield self.call("Blob/copy", {
            "fromAccountId": account_id(self.team.id),
            "accountId": account_id(self.jane.id),
            "blobIds": [blob_id],
        })
        self.assertEqual(arguments["copied"], {blob_id: blob_id})
        response, _ = yield self.download(blob_id)
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_unknown_blobs(self):
        """Unknown, foreign and malformed blob ids are notCopied with notFound."""
        known = yield self.uploaded(b"mine")
        foreign = yield self.uploaded(b"bob's", account=account_id(self.bob.id), headers=BOB)
        unknown, malformed = blake3(b"never uploaded").hexdigest(), "not-a-blob"
        _, arguments = yield self.call("Blob/copy", {
            "fromAccountId": account_id(self.jane.id),
            "accountId": account_id(self.team.id),
            "blobIds": [known, unknown, foreign, malformed],
        })
        self.assertEqual(arguments["copied"], {known: known})
        self.assertEqual(set(arguments["notCopied"]), {unknown, foreign, malformed})
        for error in arguments["notCopied"].values():
            self.assertEqual(error["type"], "notFound")

    @defer.inlineCallbacks
    def test_nothing_copied(self):
        """With no blob copied, copied is null."""
        _, arguments = yield self.call("Blob/copy", {
            "fromAccountId": account_id(self.jane.id),
            "accountId": account_id(self.team.id),
            "blobIds": [blake3(b"nothing").hexdigest()],
        })
        self.assertIsNone(arguments["copied"])

    @defer.inlineCallbacks
    def test_from_account_not_found(self):
        """A source account the user cannot reach is fromAccountNotFound."""
        blob_id = yield self.uploaded(b"bob's", account=account_id(self.bob.id), headers=BOB)
        name, arguments = yield self.call("Blob/copy", {
            "fromAccountId": account_id(self.bob.id),
            "accountId": account_id(self.jane.id),
            "blobIds": [blob_id],
        })
        self.assertEqual((name, arguments["type"]), ("error", "fromAccountNotFound"))

    @defer.inlineCallbacks
    def test_account_not_found(self):
        """A target account the user cannot reach is accountNotFound."""
        blob_id = yield self.uploaded(b"mine")
        name, arguments = yield self.call("Blob/copy", {
            "fromAccountId": account_id(self.jane.id),
            "accountId": account_id(self.bob.id),
            "blobIds": [blob_id],
        })
        self.assertEqual((name, arguments["type"]), ("error", "accountNotFound"))
        response, _ = yield self.download(blob_id, account=account_id(self.bob.id), headers=BOB)
        self.assertEqual(response.code, 404)

    @defer.inlineCallbacks
    def test_invalid_arguments(self):
        """Arguments of the wrong type, missing or unknown are invalidArguments."""
        jane, team = account_id(self.jane.id), account_id(self.team.id)
        for arguments in (
            {"fromAccountId": jane, "accountId": team, "blobIds": "abc"},
            {"fromAccountId": jane, "accountId": team, "blobIds": [1]},
            {"fromAccountId": None, "accountId": team, "blobIds": []},
            {"fromAccountId": jane, "blobIds": []},
            {"fromAccountId": jane, "accountId": team, "blobIds": [], "extra": 1},
        ):
            name, answer = yield self.call("Blob/copy", arguments)
            self.assertEqual((name, answer["type"]), ("error", "invalidArguments"), arguments)
