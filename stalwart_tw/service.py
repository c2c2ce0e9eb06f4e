"""
One node of the server as a Twisted service: `twistd stalwart`.

Start-up happens in two steps. Before the reactor runs (privilegedStartService)
the node checks its data folder and binds its ports, so that a port in use or
an unwritable folder stops `twistd` at once with one log line and exit status
1. Once the reactor runs, the store opens on its threads, the node reads its
applied index, and the directory makes sure the admin principal exists; the
web server answers 503 until then.

Shutting down goes the other way: stop accepting connections, let every
batch already handed to the writer thread finish, then close the store. So a
SIGTERM never loses a write the server has acknowledged.

The node's parts form one L{SequentialService} tree, started in this order
once the reactor runs and stopped in the reverse: worker threads, store,
node, blob store (so purges finish before the node drains), the admin
principal, the ready flag. The ports (JMAP, cluster, admin shell) are no
part of it: they are bound before the tree starts and closed before it
stops, whether the start succeeded, failed or is still going on.
"""

import ipaddress
import os
import secrets
import sys
import time
from functools import partial

from twisted.application.service import Service
from twisted.internet import ssl
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from stalwart_tw.config import MIN_SECRET_LENGTH, SETTINGS, ConfigError, load_settings
from stalwart_tw.lifecycle import SequentialService
from stalwart_tw.logs import Logger, set_level
from stalwart_tw.store.engine import check_database
from stalwart_tw.store.errors import StoreError

ENCRYPTION_KEY_FILE = "encryption.key"
# Password checks that may wait or run at once, per Argon2 thread; past
# that a login is answered 503 at once rather than queued.
VERIFICATIONS_PER_HASH_THREAD = 8
MIN_KEY_LENGTH = MIN_SECRET_LENGTH


class StartupError(Exception):
    """
    The node cannot start; the message says why, in one line.
    """


def _describe(setting):
    if setting.default is None:
        return setting.help
    return f"{setting.help} [default: {setting.format(setting.default)}]"


class Options(usage.Options):
    """
    The command line of `twistd stalwart`: `--config` and one `--name=value`
    per setting.
    """

    synopsis = "[--config=FILE] [--setting-name=value ...]"
    longdesc = (
        "Run one node of the Stalwart JMAP server. Settings come from the "
        "environment (NAME), then the command line, then the --config YAML "
        "file, then their defaults."
    )
    optParameters = [["config", "c", None, "YAML file of settings."]] + [
        [setting.name, None, None, _describe(setting)] for setting in SETTINGS
    ]

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            raise SystemExit(f"twistd stalwart: {error} (see --help)") from None

    def postOptions(self):
        command_line = {
            setting.name: self[setting.name]
            for setting in SETTINGS
            if self[setting.name] is not None
        }
        try:
            self.settings = load_settings(self["config"], command_line, os.environ)
        except ConfigError as error:
            raise SystemExit(f"twistd stalwart: {error}") from None


def makeService(options):
    """
    The twistd entry point: the service of one node.
    """
    set_level(options.settings.log_level)
    return NodeService(options.settings)


def _read_file(path, what):
    try:
        with open(path, "rb") as source:
            return source.read()
    except OSError as error:
        raise StartupError(f"cannot read {what} {path!r}: {error.strerror}") from None


def _write_atomically(path, data, mode):
    # A crash leaves either no file or the whole file, never an empty key.
    folder = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as target:
            target.write(data)
            target.flush()
            os.fsync(target.fileno())
        os.rename(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    folder_descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(folder_descriptor)
    finally:
        os.close(folder_descriptor)


def tls_options(cert_path, key_path):
    """
    Load a PEM certificate chain and its private key.

    @raise StartupError: a file is missing or not PEM, or the key does not
        match the certificate.
    """
    chain = _read_file(cert_path, "certificate")
    key = _read_file(key_path, "private key")
    marker = b"-----BEGIN CERTIFICATE-----"
    pems = [marker + part for part in chain.split(marker)[1:]]
    if not pems:
        raise StartupError(f"no PEM certificate in {cert_path!r}")
    try:
        certificate = ssl.PrivateCertificate.loadPEM(key + b"\n" + pems[0])
        extra = [ssl.Certificate.loadPEM(pem).original for pem in pems[1:]]
        return ssl.CertificateOptions(
            privateKey=certificate.privateKey.original,
            certificate=certificate.original,
            extraCertChain=extra,
        )
    except Exception as error:
        raise StartupError(
            f"cannot use certificate {cert_path!r} with key {key_path!r}: {error}"
        ) from None


def _exit_failed():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def core_extension(node):
    """
    @return: the core capability of a L{NodeService}'s JMAP server.
    """
    from stalwart_tw.jmap.core import CoreExtension

    return CoreExtension(node.blob_access)


def principals_extension(node):
    """
    @return: the principals capability of a L{NodeService}'s JMAP server.
    """
    from stalwart_tw.jmap.principal import PrincipalsExtension

    return PrincipalsExtension(node.directory, node.store, node.writer, node.settings)


def mail_extension(node):
    """
    @return: the mail capability (RFC 8621) of a L{NodeService}'s JMAP server.
    """
    from stalwart_tw.mail.extension import MailExtension

    return MailExtension(
        node.store, node.writer, node.settings, node.blobs, node.blob_access, node.processes,
        node.clock,
    )


# What the JMAP server of a node is made of, in Session order: each is
# called with the NodeService (its store, writer, directory, settings...)
# and returns an Extension.
EXTENSIONS = (core_extension, principals_extension, mail_extension)


def _stop_pool(pool):
    if pool.started:
        pool.stop()


class _Call(Service):
    """
    A part of the tree made of two calls: C{start()} and C{stop()}, each
    may return a Deferred (C{None} for nothing to do).
    """

    def __init__(self, name, start=None, stop=None):
        self.name = name
        self._start = start
        self._stop = stop

    def startService(self):
        super().startService()
        if self._start is not None:
            return self._start()
        return None

    def stopService(self):
        super().stopService()
        if self._stop is not None:
            return self._stop()
        return None


class NodeService(SequentialService):
    """
    Everything one node runs: store, node, blob store, directory, the web
    server and the admin shell.

    @param extensions: the factories of the JMAP server's extensions
        (L{EXTENSIONS} by default), each called with this service.
    """

    log = Logger()

    def __init__(self, settings, reactor=None, extensions=EXTENSIONS):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        # What extensions schedule and date by.
        self.clock = reactor
        self._extensions = tuple(extensions)
        self.settings = settings
        self.ready = False
        # From the first moment of a stop: what 503s then say.
        self.stopping = False
        self.ports = {}
        self.identity = None
        self.cluster = None
        self._cluster_stopped = False
        self._started_at = None
        # The start of the tree, failures logged: fires once the node is
        # ready or has given up.
        self.opened = None
        self._build_components()
        self._build_tree()

    def _build_tree(self):
        for part in (
            _Call("workers", self.workers.start, partial(_stop_pool, self.workers)),
            _Call("hashers", self.hashers.start, partial(_stop_pool, self.hashers)),
            _Call("processes", self.processes.start, self.processes.stop),
            _Call("store", self.store.open, self.store.close),
            self.node,
            self.blobs,
            _Call("admin", self._ensure_admin),
            _Call("ready", self._now_ready, self._not_ready),
        ):
            part.setServiceParent(self)

    def _ensure_admin(self):
        return self.directory.ensure_admin(self.settings.admin_secret)

    def _now_ready(self):
        self.ready = True
        self.log.info("node ready, data in {path}", path=os.path.abspath(self.settings.db_path))

    def _not_ready(self):
        self.ready = False

    async def _close_ports(self):
        if self.cluster is not None and not self._cluster_stopped:
            # Before the JMAP port closes: peers hear "leave" at once.
            self._cluster_stopped = True
            await self.cluster.stop()
        await self._stop_listening()

    def _build_components(self):
        # Imported here so that `twistd --help` stays quick.
        from stalwart_tw.cluster.node import LocalNode
        from stalwart_tw.http.app import JmapHttp
        from stalwart_tw.jmap.core import BlobAccess
        from stalwart_tw.jmap.push import StateChangeBus
        from stalwart_tw.jmap.server import JmapServer
        from stalwart_tw.processes import ProcessPool
        from stalwart_tw.store.blobs import BlobStore
        from stalwart_tw.store.directory import Directory
        from stalwart_tw.store.engine import Store
        from stalwart_tw.writer import AccountWriter

        settings, data = self.settings, self.settings.db_path
        # Blob file I/O and large request bodies run here, never on the
        # reactor thread; Argon2 has threads of its own, so that password
        # checks (an attacker's included) never hold a download up.
        self.workers = ThreadPool(1, settings.worker_pool_size, name="workers")
        hash_threads = max(1, settings.worker_pool_size // 2)
        self.hashers = ThreadPool(1, hash_threads, name="argon2")
        self.store = Store(
            os.path.join(data, "idx"), settings.worker_pool_size, reactor=self._reactor
        )
        self.processes = ProcessPool(
            settings.worker_processes,
            partial(deferToThreadPool, self._reactor, self.workers),
            reactor=self._reactor,
        )
        self.node = LocalNode(self.store)
        self.writer = AccountWriter(self.store, self.node)
        self.blobs = BlobStore(
            os.path.join(data, "blobs"),
            settings.blob_nested_levels,
            settings.blob_temp_ttl,
            self.store,
            self.writer,
            clock=self._reactor,
            threadpool=self.workers,
            reactor=self._reactor,
        )
        self.directory = Directory(
            self.store,
            self.writer,
            clock=self._reactor,
            hash_threadpool=self.hashers,
            reactor=self._reactor,
            max_verifications=hash_threads * VERIFICATIONS_PER_HASH_THREAD,
        )
        # The reactor is the blob store's clock too, so copies expire on the
        # same clock as uploads.
        self.blob_access = BlobAccess(
            self.blobs, self.store, self.writer, self._reactor, settings.max_objects_in_set
        )
        # Every applied batch tells the bus which states moved, for push.
        self.bus = StateChangeBus()
        self.writer.add_listener(self.bus.publish)
        self.jmap = JmapServer(
            settings,
            self.directory,
            [extension(self) for extension in self._extensions],
            bus=self.bus,
            blobs=self.blob_access,
        )
        self.writer.add_listener(self.jmap.on_applied)
        self.http = JmapHttp(
            self.jmap,
            self.directory,
            settings,
            lambda: self.ready,
            threadpool=self.workers,
            reactor=self._reactor,
            cluster=self.describe_cluster,
            is_stopping=lambda: self.stopping,
        )

    # Before the reactor runs.

    def privilegedStartService(self):
        # The ports are bound here, not by a child: a port in use must stop
        # start-up before any part opens.
        try:
            self._prepare_data_folder()
            self._listen()
            super().privilegedStartService()
        except StartupError as error:
            self.log.critical("{message}", message=str(error))
            self._stop_listening()
            raise SystemExit(1) from None

    def _prepare_data_folder(self):
        path = self.settings.db_path
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise StartupError(f"cannot create db-path {path!r}: {error.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise StartupError(f"db-path {path!r} is not writable")
        try:
            check_database(self.store.path)
        except StoreError as error:
            raise StartupError(str(error)) from None
        self.encryption_key = self._load_encryption_key()
        from stalwart_tw.cluster.identity import load_identity

        try:
            self.identity = load_identity(path)
        except (ValueError, OSError) as error:
            raise StartupError(f"cannot read the node's identity: {error}") from None

    def _load_encryption_key(self):
        if self.settings.encryption_key:
            return self.settings.encryption_key
        path = os.path.join(self.settings.db_path, ENCRYPTION_KEY_FILE)
        if os.path.exists(path):
            key = _read_file(path, "encryption key").decode("ascii", "replace").strip()
            if len(key) < MIN_KEY_LENGTH:
                raise StartupError(
                    f"encryption key in {path!r} is shorter than {MIN_KEY_LENGTH} characters"
                )
            return key
        key = secrets.token_urlsafe(32)
        _write_atomically(path, (key + "\n").encode("ascii"), 0o600)
        self.log.info("generated the encryption key in {path}", path=path)
        return key

    def _listen(self):
        from stalwart_tw.http.app import make_site

        settings = self.settings
        site = make_site(self.http, settings, self._reactor)
        if settings.jmap_cert_path:
            scheme = "https"
            factory = TLSMemoryBIOFactory(
                tls_options(settings.jmap_cert_path, settings.jmap_key_path), False, site
            )
        else:
            scheme, factory = "http", site
        self._listen_one("JMAP", scheme, factory, settings.jmap_bind_addr, settings.jmap_port)
        if settings.rpc_advertise_addr is not None:
            self._listen_cluster()
        if settings.manhole_port:
            from stalwart_tw.admin.manhole import manhole_factory

            if not ipaddress.ip_address(settings.manhole_bind_addr).is_loopback:
                self.log.warn(
                    "the admin shell listens on {address}, beyond loopback: telnet "
                    "sends the admin password in clear",
                    address=settings.manhole_bind_addr,
                )

            self._listen_one(
                "admin shell",
                "telnet",
                manhole_factory(
                    self.directory, self.status, self.describe_cluster,
                    auth_rate=settings.rate_limit_auth, clock=self._reactor,
                ),
                settings.manhole_bind_addr,
                settings.manhole_port,
            )

    def _listen_cluster(self):
        from stalwart_tw.cluster.transport import ClusterTransport

        settings = self.settings
        self.cluster = ClusterTransport(
            settings, self.identity, self.encryption_key, self._reactor
        )
        try:
            self.cluster.listen()
        except CannotListenError as error:
            reason = error.socketError.strerror if error.socketError else str(error)
            raise StartupError(
                f"cannot listen for RPC and gossip on {settings.rpc_bind_addr} port "
                f"{settings.rpc_port}: {reason}"
            ) from None
        except (OSError, ValueError) as error:
            raise StartupError(f"cannot set up RPC TLS: {error}") from None

    def describe_cluster(self):
        """
        @return: this node and its peers, as C{GET /admin/cluster} shows them.
        """
        if self.cluster is not None and self.cluster.gossip is not None:
            return self.cluster.describe()
        return {
            "node": {
                "id": self.identity.node_id if self.identity else None,
                "rpc": None,
                "jmapUrl": self.settings.jmap_url,
                "role": self.settings.cluster_role,
            },
            "peers": [],
        }

    def _listen_one(self, name, scheme, factory, address, port):
        try:
            listening = self._reactor.listenTCP(port, factory, interface=address)
        except CannotListenError as error:
            reason = error.socketError.strerror if error.socketError else str(error)
            raise StartupError(
                f"cannot listen for {name} on {address} port {port}: {reason}"
            ) from None
        self.ports[name] = listening
        bound = listening.getHost()
        host = f"[{bound.host}]" if ":" in bound.host else bound.host
        self.log.info(
            "{name} listening on {scheme}://{host}:{port}",
            name=name,
            scheme=scheme,
            host=host,
            port=bound.port,
        )

    # Once the reactor runs.

    def startService(self):
        if not self.ports:
            self.privilegedStartService()
        self._started_at = time.monotonic()
        super().startService()
        self.opened = self.started
        self.opened.addErrback(self._start_failed)

    def _start_failed(self, failure):
        self.log.critical(
            "the node could not start: {error}", error=failure.getErrorMessage() or failure.type
        )
        self.log.failure("start-up failure", failure, level=LogLevel.debug)
        if self._reactor.running:
            # twistd exits 0 once the reactor stops; a node that failed to
            # start must not look like one that stopped cleanly.
            self._reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
            self._reactor.stop()

    def stopService(self):
        return ensureDeferred(self._shut_down())

    async def _shut_down(self):
        self.stopping = True
        # No new connection, and peers told, before anything waits for
        # the start in progress or for writes to drain.
        await self._close_ports()
        await super().stopService()
        self._stopped()

    def _stopped(self):
        self.log.info("node stopped")
        # twistd re-raises SIGTERM once the reactor stops, so the process
        # would report death by signal after a clean stop (and lose buffered
        # log lines). A node that shut down cleanly exits 0.
        if getattr(self._reactor, "_exitSignal", None) is not None:
            self._reactor._exitSignal = None

    def _stop_listening(self):
        ports, self.ports = list(self.ports.values()), {}
        return DeferredList([port.stopListening() for port in ports])

    def status(self):
        """
        @return: a Deferred firing with what the admin shell shows of this
            node (sizes are summed on a thread).
        """
        return ensureDeferred(self._status())

    async def _status(self):
        return {
            "data path": os.path.abspath(self.settings.db_path),
            "database bytes": self.store.size_on_disk(),
            "blob bytes": await self.blobs.size_on_disk(),
            "uptime seconds": int(time.monotonic() - (self._started_at or time.monotonic())),
            "applied index": self.node.applied_index,
            "ready": self.ready,
        }
