"""
The admin shell: a Twisted manhole over telnet, for the operator only.

The wiring is twisted.conch.manhole_tap's: a TelnetTransport running
AuthenticatingTelnetProtocol against a portal, whose realm hands a logged-in
connection to TelnetBootstrapProtocol -> insults.ServerProtocol -> a
ColoredManhole. What we add:

 - L{AdminChecker} accepts only the user C{admin} and checks the password
   with L{Directory.authenticate}, off the reactor thread. The factory makes
   one checker per connection, because C{buildProtocol} is the one place
   that knows the peer's address, which every failed login logs. A failed
   login only gets AuthenticatingTelnetProtocol's retry prompt.
 - The namespace holds helpers over the directory (C{help()} lists them).
   They return Deferreds; L{AdminInterpreter} prints what they fire with in
   a readable form (a principal as C{field: value} lines) and turns a
   failure into one line of text. A failure is consumed once shown, so a
   typo in the shell never becomes an "Unhandled error in Deferred" in the
   server's log; failures that are not L{DirectoryError}s are also logged
   with their traceback.

The service layer binds the port (loopback only) with L{manhole_factory}.
"""

import inspect
import time
from datetime import datetime, timezone

from twisted.conch.insults import insults
from twisted.conch.manhole import ColoredManhole, ManholeInterpreter
from twisted.conch.telnet import (
    ECHO,
    AuthenticatingTelnetProtocol,
    ITelnetProtocol,
    TelnetBootstrapProtocol,
    TelnetTransport,
)
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.protocol import ServerFactory
from zope.interface import implementer

from stalwart_tw.auth.ratelimit import FailedLogins
from stalwart_tw.logs import Logger
from stalwart_tw.setting_kinds import Rate
from stalwart_tw.store.directory import (
    ADMIN_NAME,
    DOMAIN,
    GROUP,
    INDIVIDUAL,
    LIST,
    DirectoryError,
    Principal,
    PrincipalNotFound,
    VerificationsBusy,
)

log = Logger()

BANNER = "stalwart admin shell; help() lists the helpers"
# rate-limit-auth's default, for a shell built without settings.
DEFAULT_AUTH_RATE = Rate(10, 60)


def describe_peer(address):
    """
    @return: C{host:port} for an IP address, else its string form.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(ICredentialsChecker)
class AdminChecker:
    """
    Accept the user C{admin} with its directory password, for the
    connection from C{peer}.

    @ivar last_attempt: the Deferred of the latest check, which fires after
        the login it belongs to has been handled (tests wait on it).
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, directory, peer, failures):
        self._directory = directory
        self._peer = peer
        self._failures = failures
        self.last_attempt = None

    def requestAvatarId(self, credentials):
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        try:
            password = credentials.password
            if isinstance(password, bytes):
                password = password.decode("utf-8")
        except UnicodeDecodeError:
            # Every stored secret is text, so these bytes cannot match one.
            password = None
        address = getattr(self._peer, "host", None) or str(self._peer)
        if self._failures.retry_after(address, username) is not None:
            # Throttled before any password check.
            checked = fail(UnauthorizedLogin("too many failed logins; try again later"))
        elif username == ADMIN_NAME and password:
            checked = self._directory.authenticate(ADMIN_NAME, password)
            checked.addCallbacks(self._checked, self._broken, callbackArgs=(username, address))
        else:
            checked = succeed(None)
            checked.addCallbacks(self._checked, self._broken, callbackArgs=(username, address))
        self.last_attempt = checked
        return checked

    def _checked(self, principal, username, address):
        if principal is None or principal.name != ADMIN_NAME:
            self._failures.failed(address, username, describe_peer(self._peer))
            raise UnauthorizedLogin("wrong user name or password")
        log.info("admin shell: admin logged in from {peer}", peer=describe_peer(self._peer))
        return ADMIN_NAME.encode("ascii")

    def _broken(self, failure):
        if failure.check(UnauthorizedLogin):
            return failure
        if failure.check(VerificationsBusy):
            log.warn("admin shell: login from {peer} refused: too many logins being checked",
                     peer=describe_peer(self._peer))
            raise UnauthorizedLogin("too many logins are being checked; try again shortly")
        # The directory could not answer (store closed, thread pool gone):
        # the user sees a failed login, the operator the reason.
        log.failure("admin shell: cannot check a login from {peer}", failure,
                    peer=describe_peer(self._peer))
        raise UnauthorizedLogin("the directory cannot check passwords now")


@implementer(IRealm)
class AdminRealm:
    """
    Give a logged-in admin a shell over the helpers of C{namespace}.
    """

    def __init__(self, namespace):
        self._namespace = namespace

    def requestAvatar(self, avatar_id, mind, *interfaces):
        if ITelnetProtocol not in interfaces:
            raise NotImplementedError("the admin shell only speaks telnet")
        shell = TelnetBootstrapProtocol(insults.ServerProtocol, AdminShell, self._namespace)
        return ITelnetProtocol, shell, lambda: None


class AdminShell(ColoredManhole):
    """
    A colored manhole that shows helper results readably.
    """

    def connectionMade(self):
        super().connectionMade()
        self.interpreter = AdminInterpreter(self, self.namespace)

    def initializeScreen(self):
        self.terminal.reset()
        self.terminal.write(BANNER.encode("utf-8"))
        self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()


class AdminInterpreter(ManholeInterpreter):
    """
    Shows results with L{render}, and Deferreds' outcomes when they fire.

    @ivar last_shown: the latest Deferred displayed; it fires after its
        outcome has been written (tests wait on it).
    """

    def __init__(self, handler, locals=None, filename="<console>"):
        super().__init__(handler, locals, filename)
        self._next_number = 0
        self.last_shown = None

    def displayhook(self, obj):
        self.locals["_"] = obj
        if isinstance(obj, Deferred):
            self._show_deferred(obj)
        elif obj is not None:
            self.write(render(obj) if isinstance(obj, (Principal, Text)) else repr(obj))

    def _show_deferred(self, deferred):
        number, self._next_number = self._next_number, self._next_number + 1
        # A Deferred may fire while it is being displayed (even one whose
        # "called" is set can still wait on another), so the callbacks
        # themselves say whether it did: then the outcome goes inline,
        # otherwise it comes later and interrupts the prompt line.
        fired = later = False

        def show(text, verb):
            nonlocal fired
            fired = True
            self._write_outcome(number, text, later, verb)

        def show_result(result):
            show(render(result), "")
            return result

        def show_failure(failure):
            if not failure.check(DirectoryError):
                log.failure("admin shell: a helper failed", failure)
            show(failure.getErrorMessage(), " failed")

        deferred.addCallbacks(show_result, show_failure)
        self.last_shown = deferred
        if not fired:
            later = True
            self.write(f"<Deferred #{number}>")

    def _write_outcome(self, number, text, later, verb):
        if later:
            self.write(f"Deferred #{number}{verb}:\n{text}", True)
        else:
            self.write(f"error: {text}" if verb else text)


class Text(str):
    """
    A helper's answer, shown as it is rather than quoted.
    """

    def __repr__(self):
        return str(self)


def _quota(quota):
    if not quota:
        return "unlimited"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if quota >= size:
            return f"{quota} bytes ({quota / size:.1f} {unit})"
    return f"{quota} bytes"


def render_principal(principal):
    """
    @return: a principal as C{field: value} lines.
    """
    created = datetime.fromtimestamp(principal.created_at, timezone.utc)
    lines = [
        f"name: {principal.name}",
        f"kind: {principal.kind}",
        f"id: {principal.id}",
    ]
    if principal.kind != DOMAIN:
        lines.append(f"email: {principal.email or '-'}")
        lines.append(f"aliases: {', '.join(principal.aliases) or '-'}")
    if principal.kind in (GROUP, LIST):
        lines.append(f"members: {', '.join(principal.members) or '-'}")
    lines += [
        f"description: {principal.description or '-'}",
        f"quota: {_quota(principal.quota)}",
        f"timezone: {principal.timezone or '-'}",
        f"created: {created:%Y-%m-%d %H:%M:%S} UTC",
    ]
    return "\n".join(lines)


def _summary(principal):
    parts = [principal.name]
    if principal.email:
        parts.append(f"<{principal.email}>")
    if principal.kind in (GROUP, LIST):
        parts.append(f"[{', '.join(principal.members)}]")
    if principal.description:
        parts.append(f"- {principal.description}")
    return " ".join(parts)


def render(value):
    """
    @return: the text the shell shows for a helper's result.
    """
    if isinstance(value, Principal):
        return render_principal(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return "\n".join(_summary(item) if isinstance(item, Principal) else render(item)
                         for item in value) or "(none)"
    if isinstance(value, dict):
        return "\n".join(f"{key}: {item}" for key, item in value.items())
    if value is None:
        return "done"
    return repr(value)


class AdminHelpers:
    """
    The functions of the shell's namespace; each returns a Deferred.
    """

    def __init__(self, directory, status, cluster=None):
        self._directory = directory
        self._status = status
        self._cluster = cluster

    def create_account(self, name, password, email=None, aliases=(), quota=0, description=None):
        """Create an individual that logs in with name (or any address) and password."""
        return self._directory.create_principal(
            INDIVIDUAL, name, secret=password, email=email, aliases=aliases,
            quota=quota, description=description,
        )

    def create_domain(self, name):
        """Create a domain, so that addresses @name can be given out."""
        return self._directory.create_principal(DOMAIN, name)

    def create_group(self, name, email=None, members=()):
        """Create a group of individuals and groups."""
        return self._directory.create_principal(GROUP, name, email=email, members=members)

    def create_list(self, name, email, members=()):
        """Create a mailing list at address email."""
        return self._directory.create_principal(LIST, name, email=email, members=members)

    def list_accounts(self):
        """List the individuals."""
        return self._directory.list(INDIVIDUAL)

    def list_domains(self):
        """List the domains."""
        return self._directory.list(DOMAIN)

    def list_groups(self):
        """List the groups and their members."""
        return self._directory.list(GROUP)

    def list_lists(self):
        """List the mailing lists and their members."""
        return self._directory.list(LIST)

    def show(self, name):
        """Show every field of one principal."""
        return self._directory.get(name).addCallback(self._found, name)

    def _found(self, principal, name):
        if principal is None:
            raise PrincipalNotFound(f"no principal named {name!r}")
        return principal

    def update(self, name, /, **changes):
        """Change name, password, description, email, quota or timezone."""
        if "password" in changes:
            changes["secret"] = changes.pop("password")
        return maybeDeferred(self._directory.update, name, **changes)

    def delete(self, name):
        """Delete a principal with its addresses and memberships."""
        return self._directory.delete(name).addCallback(lambda _: Text(f"deleted {name}"))

    def add_alias(self, name, address):
        """Give a principal one more address."""
        return self._directory.add_alias(name, address)

    def remove_alias(self, name, address):
        """Take an alias address away from a principal."""
        return self._directory.remove_alias(name, address)

    def add_member(self, group, member):
        """Add a member to a group or list."""
        return self._directory.add_member(group, member)

    def remove_member(self, group, member):
        """Remove a member from a group or list."""
        return self._directory.remove_member(group, member)

    def status(self):
        """Show the data path, database and blob sizes, uptime and applied index."""
        return maybeDeferred(self._status)

    def cluster(self):
        """Show this node and its peers: address, state, phi, epoch, last contact, RPC."""
        if self._cluster is None:
            return maybeDeferred(lambda: Text("this node runs alone"))
        return maybeDeferred(lambda: Text(render_cluster(self._cluster())))

    NAMES = (
        "create_account", "create_domain", "create_group", "create_list",
        "list_accounts", "list_domains", "list_groups", "list_lists", "show",
        "update", "delete", "add_alias", "remove_alias", "add_member",
        "remove_member", "status", "cluster",
    )

    def help(self):
        """List the helpers."""
        lines = ["Helpers (each returns a Deferred; its result is shown when it fires):"]
        for name in self.NAMES + ("help",):
            function = getattr(self, name)
            summary = function.__doc__.strip().splitlines()[0]
            lines.append(f"  {name}{inspect.signature(function)}: {summary}")
        return Text("\n".join(lines))

    def namespace(self):
        """
        @return: the shell's namespace: every helper by name.
        """
        return {name: getattr(self, name) for name in self.NAMES + ("help",)}


_CLUSTER_COLUMNS = ("id", "address", "state", "phi", "epoch", "last contact", "RPC")


def render_cluster(described, now=None):
    """
    @param described: the cluster document (as C{GET /admin/cluster}).
    @return: the member table as text.
    """
    now = time.time() if now is None else now
    node = described["node"]
    rows = [_CLUSTER_COLUMNS]
    for peer in described["peers"]:
        seen = peer.get("lastSeen")
        rows.append((
            peer["id"], peer["rpc"], peer["state"], f"{peer['phi']:.2f}", str(peer["epoch"]),
            "never" if seen is None else f"{max(now - seen, 0):.1f} s ago",
            peer.get("rpcConnection") or "-",
        ))
    widths = [max(len(str(row[column])) for row in rows) for column in range(len(rows[0]))]
    lines = [f"this node: {node['id']} at {node['rpc']} ({node['role']}), {node['jmapUrl']}"]
    for row in rows:
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    return "\n".join(lines).rstrip()


class AdminLoginProtocol(AuthenticatingTelnetProtocol):
    """
    The login prompt. Twisted's waits for the client to acknowledge that the
    server stops echoing before it checks the password, and never checks it
    when the client refused the echo in the first place (netcat, telnetlib,
    some terminals); this one checks the password either way.
    """

    def telnet_User(self, line):
        self.username = line
        # A client may refuse to let the server echo; the login goes on.
        self.transport.will(ECHO).addErrback(lambda failure: None)
        self.transport.write(b"Password: ")
        return "Password"

    def telnet_Password(self, line):
        username, password = self.username, line
        del self.username

        def login(ignored):
            creds = UsernamePassword(username, password)
            result = self.portal.login(creds, None, ITelnetProtocol)
            result.addCallbacks(self._cbLogin, self._ebLogin)

        self.transport.wont(ECHO).addBoth(login)
        return "Discard"


class AdminShellFactory(ServerFactory):
    """
    Builds, per connection, the telnet login in front of the admin shell.
    """

    def __init__(self, directory, status, cluster=None, auth_rate=None, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self._directory = directory
        self.namespace = AdminHelpers(directory, status, cluster).namespace()
        # One throttle for every connection: a new connection per guess
        # gains nothing.
        self.failures = FailedLogins(auth_rate or DEFAULT_AUTH_RATE, clock, log, "admin shell")

    def buildProtocol(self, addr):
        checker = AdminChecker(self._directory, addr, self.failures)
        portal = Portal(AdminRealm(self.namespace), [checker])
        protocol = TelnetTransport(AdminLoginProtocol, portal)
        protocol.factory = self
        return protocol


def manhole_factory(directory, status, cluster=None, auth_rate=None, clock=None):
    """
    The admin shell's telnet factory; the caller binds it to a port.

    @param directory: the L{Directory} that logins are checked against and
        that the helpers act on.
    @param status: a zero-argument callable returning a dict (data path,
        database and blob sizes in bytes, uptime seconds, applied index).
    @param cluster: a zero-argument callable returning the cluster document
        (as C{GET /admin/cluster}), or C{None} for a node that runs alone.
    @param auth_rate: failed logins allowed per address and per login name
        (rate-limit-auth); past it a login is refused before any check.
    @param clock: the IReactorTime the limit counts on.
    """
    return AdminShellFactory(directory, status, cluster, auth_rate, clock)


__all__ = ["AdminChecker", "AdminShellFactory", "manhole_factory", "render"]
