"""
The directory: principals (individuals, groups, lists, domains), their
addresses, memberships and secrets.

The L{Directory} reads principals, hashes and verifies secrets, and commits
writes; the rules and the building of each write's batch are in
L{stalwart_tw.store.principal_changes}.

Design choices:

 - The directory is account 0 (L{schema.DIRECTORY_ACCOUNT}). Every write
   goes through the L{AccountWriter} on that account: it reads the current
   state, builds one L{WriteBatch} that expects the directory's modseq as
   read, logs each principal it touches as a C{Principal} change, and
   commits; two directory writes on this node never interleave, and one
   built on stale state (another node's leader term) is rebuilt once.
 - Everything a follower needs to replay a write is in the batch: the new id
   (from the C{id_sequences} row, read while building), the creation time
   (read from the injected clock before building), the Argon2 hash
   (computed once, before building, so a rebuild does not hash again;
   L{Directory.hash_secret} for Principal/set). Deletes are explicit rows
   in the batch (addresses, memberships both ways) rather than relying on
   the database's cascades, so the batch says everything it changes.
 - Validation that needs no data (kinds, name syntax, address syntax, quota,
   time zone) happens before anything is read; rules that need data (a
   domain exists, an address is free, a member exists, no membership cycle)
   are checked while building, inside the same read transaction the batch
   is built from, and raise a L{DirectoryError} subclass whose message names
   the offending value.
 - Names and addresses are stored lower-case: logins, domain names and
   e-mail addresses are compared without case everywhere in mail, and one
   spelling per principal keeps uniqueness simple. A name is a login, so it
   holds no whitespace or control characters. A domain name must be an LDH
   DNS name (international names in their xn-- form).
 - Groups hold individuals and other groups (never a cycle); lists hold
   individuals and groups. Only individuals have a secret and can log in.
   A domain, or a rename of one, is refused while addresses use it, rather
   than silently rewriting other principals' addresses.
 - Secrets are Argon2id PHC strings. Hashing and verifying run on a thread
   pool, never on the reactor. An unknown login is verified against a dummy
   hash so that its timing does not reveal which logins exist.
 - A successful verification is remembered for L{CACHE_SECONDS} on the
   injected clock, keyed by the login and a BLAKE3 keyed hash of the
   password (the key is random per process, so the cache holds nothing that
   could be attacked offline). Failures are never cached. A committed
   change to a principal drops its entries alone (a write elsewhere in the
   directory leaves other users' logins cached), and a verification of a
   principal that changed while it was in flight is not cached.
"""

import os
import secrets
import threading
from contextlib import suppress
from dataclasses import dataclass, replace

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from blake3 import blake3
from sqlalchemy import select, true
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.threads import deferToThreadPool

from stalwart_tw.logs import Logger
from stalwart_tw.store import schema
from stalwart_tw.store.changes import type_modseq
from stalwart_tw.store.principal_changes import (
    CHANGE_TYPE,
    DOMAIN,
    GROUP,
    INDIVIDUAL,
    KINDS,
    LIST,
    AddressInUse,
    DirectoryError,
    InvalidPrincipal,
    PrincipalExists,
    PrincipalNotFound,
    _build_add_alias,
    _build_add_member,
    _build_create,
    _build_delete,
    _build_remove_alias,
    _build_remove_member,
    _build_replace,
    _build_update,
    _check_address,
    _check_changes,
    _check_kind,
    _check_replace,
    _lookup_name,
    _new_principal,
    plan_directory_change,
)
from stalwart_tw.store.schema import DIRECTORY_ACCOUNT

ADMIN_NAME = "admin"

CACHE_SECONDS = 60
CACHE_MAX_ENTRIES = 10_000
# Snapshots kept until the directory changes, by the set of ids asked for.
SNAPSHOT_CACHE_MAX_ENTRIES = 1_000


class VerificationsBusy(Exception):
    """
    As many password checks as the directory takes are already queued or
    running; this one was not started. Answer "busy, retry shortly".
    """


@dataclass(frozen=True)
class Principal:
    """
    A principal as read from the directory. It never carries the secret.

    @ivar members: the names of the members (groups and lists), sorted.
    @ivar aliases: the alias addresses, sorted; C{email} is the primary one.
    @ivar quota: bytes, 0 for unlimited.
    @ivar created_at: seconds since the epoch.
    """

    id: int
    kind: str
    name: str
    description: str = None
    email: str = None
    aliases: tuple = ()
    members: tuple = ()
    quota: int = 0
    timezone: str = None
    created_at: int = 0


# Argon2 threads run niced, so that password checks (an attacker's among
# them) take the CPU only when serving users leaves it: on Linux a thread's
# nice value is its own, and libargon2's lane threads inherit it.
HASH_THREAD_NICENESS = 10
_niced = threading.local()


def _yielding(function, *args):
    # On a thread of the node's own Argon2 pool.
    if not getattr(_niced, "done", False):
        _niced.done = True
        with suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)
    return function(*args)


def _to_terminal(text):
    # File descriptor 2 itself: twistd sends sys.stderr to the log. With no
    # terminal left (a daemon), the line is lost, never logged.
    with suppress(OSError):
        os.write(2, text.encode("utf-8"))


def changes_directory(apply_result):
    """
    @return: whether an applied batch changed any principal.
    """
    return CHANGE_TYPE in apply_result.type_states.get(DIRECTORY_ACCOUNT, {})


def changed_principals(apply_result):
    """
    @return: the ids of the principals an applied batch changed.
    """
    ids = apply_result.changed.get(DIRECTORY_ACCOUNT, {}).get(CHANGE_TYPE, ())
    return {int(principal_id) for principal_id in ids}


# Reading; these run on the store's reader threads.


def _snapshot(connection, principal_ids):
    p = schema.principals
    condition = true() if principal_ids is None else p.c.id.in_(sorted(principal_ids))
    found = _load(connection, condition)
    member_names = sorted({name for principal in found for name in principal.members})
    ids_by_name = dict(
        connection.execute(select(p.c.name, p.c.id).where(p.c.name.in_(member_names))).all()
    ) if member_names else {}
    return type_modseq(connection, DIRECTORY_ACCOUNT, CHANGE_TYPE), found, ids_by_name


def _group_ids_of(connection, principal_id):
    members, principals = schema.principal_members, schema.principals
    rows = connection.execute(
        select(members.c.group_id)
        .join(principals, principals.c.id == members.c.group_id)
        .where((members.c.member_id == principal_id) & (principals.c.kind == "group"))
        .order_by(members.c.group_id)
    )
    return [row[0] for row in rows]


# Every column but the secret, which never leaves this module's checks.
def _public_columns():
    p = schema.principals
    return [column for column in p.c if column.name != "secret"]


def _load(connection, condition):
    """
    @return: the principals matching C{condition}, sorted by name.
    """
    p, e, m = schema.principals, schema.principal_emails, schema.principal_members
    rows = connection.execute(
        select(*_public_columns()).where(condition).order_by(p.c.name)
    ).all()
    if not rows:
        return []
    # Subqueries rather than lists of ids: a listing of every principal
    # must not hit the database's limit on bound parameters.
    wanted = select(p.c.id).where(condition)
    addresses = {}
    for address, owner, is_alias in connection.execute(
        select(e.c.address, e.c.principal_id, e.c.is_alias)
        .where(e.c.principal_id.in_(wanted))
        .order_by(e.c.address)
    ):
        addresses.setdefault(owner, []).append((address, is_alias))
    members = {}
    for group_id, member_name in connection.execute(
        select(m.c.group_id, p.c.name)
        .join(p, p.c.id == m.c.member_id)
        .where(m.c.group_id.in_(wanted))
        .order_by(p.c.name)
    ):
        members.setdefault(group_id, []).append(member_name)
    return [_principal(row, addresses.get(row.id, ()), members.get(row.id, ())) for row in rows]


def _principal(row, addresses, members):
    primary = next((address for address, is_alias in addresses if not is_alias), None)
    return Principal(
        id=row.id,
        kind=row.kind,
        name=row.name,
        description=row.description,
        email=primary,
        aliases=tuple(address for address, is_alias in addresses if is_alias),
        members=tuple(members),
        quota=row.quota,
        timezone=row.timezone,
        created_at=row.created_at,
    )


def _load_one(connection, condition):
    found = _load(connection, condition)
    return found[0] if found else None


def _by_address(address):
    e = schema.principal_emails
    return schema.principals.c.id.in_(select(e.c.principal_id).where(e.c.address == address))


def _load_credentials(connection, login):
    """
    @return: (principal, secret hash) of the individual with a secret that
        C{login} names (by name first, then by address), else (None, None).
    """
    p = schema.principals
    principal = _load_one(connection, p.c.name == login)
    if principal is None and "@" in login:
        principal = _load_one(connection, _by_address(login))
    if principal is None or principal.kind != INDIVIDUAL:
        return None, None
    secret = connection.execute(select(p.c.secret).where(p.c.id == principal.id)).scalar()
    return (principal, secret) if secret else (None, None)


def drafted_principal(draft, principal_id):
    """
    @return: the L{Principal} of that id as the batch of C{draft} leaves it,
        or None; and its members' ids by name.
    """
    row = draft.first("principals", id=principal_id)
    if row is None:
        return None, {}
    addresses = sorted(
        (found["address"], bool(found["is_alias"]))
        for found in draft.rows("principal_emails", principal_id=principal_id)
    )
    member_ids = {}
    for found in draft.rows("principal_members", group_id=principal_id):
        member = draft.first("principals", id=found["member_id"])
        if member is not None:
            member_ids[member["name"]] = member["id"]
    principal = Principal(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        description=row["description"],
        email=next((address for address, is_alias in addresses if not is_alias), None),
        aliases=tuple(address for address, is_alias in addresses if is_alias),
        members=tuple(sorted(member_ids)),
        quota=row["quota"],
        timezone=row["timezone"],
        created_at=row["created_at"],
    )
    return principal, member_ids


class Directory:
    """
    The principals of the server, read through the store and written
    through the L{AccountWriter}.

    @param clock: an L{IReactorTime} for creation times and the
        verification cache; the global reactor by default.
    @param hash_threadpool: the thread pool Argon2 runs on (the node's
        gives it threads of its own, apart from blob I/O); the reactor's
        own pool by default.
    @param max_verifications: how many password checks may be queued or
        running at once; one more fails at once with L{VerificationsBusy},
        so wrong passwords sent as fast as an attacker can never build a
        queue that a real user waits behind. C{None}: no bound.
    @param password_hasher: an argon2 L{PasswordHasher}; its defaults by
        default (tests pass cheap parameters).
    @param reactor: the reactor that thread results are delivered through.
    @param show: C{show(text)} puts a line before the operator and nowhere
        else: the generated admin password. By default the process's
        standard error as it was at start (the terminal of `twistd -n`),
        written past the log's redirection of C{sys.stderr}.
    """

    log = Logger()

    def __init__(
        self, store, writer, clock=None, hash_threadpool=None, password_hasher=None, reactor=None,
        show=None, max_verifications=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._store = store
        self._writer = writer
        self._show = show if show is not None else _to_terminal
        self._hash_pool = hash_threadpool
        self._max_verifications = max_verifications
        # Password checks queued or running now.
        self.verifying = 0
        self._hasher = password_hasher if password_hasher is not None else PasswordHasher()
        self._dummy_hash = None
        # (login, keyed digest of the password) -> (Principal, expiry time).
        self._verified = {}
        # Bumped by every change to the directory.
        self._cache_generation = 0
        # principal id -> the generation of its last change: a
        # verification of it that started before must not be cached.
        self._changed_at = {}
        # Verifications that started before this generation are not cached
        # (the table above was emptied then, to bound it).
        self._cache_floor = 0
        # frozenset of principal ids (None: all) -> snapshot, dropped with
        # the login cache: the directory reads far more often than it changes.
        self._snapshots = {}
        # Random per process, so cached digests are useless outside it.
        self._cache_key = secrets.token_bytes(32)
        # Principal changes reach this node by other paths than this
        # object's writes (Principal/set, other nodes); any of them drops
        # the cache, before the writer hears its commit succeeded.
        writer.add_listener(self._on_applied)

    def _on_applied(self, result):
        changed = changed_principals(result)
        if not changed:
            return
        self._cache_generation += 1
        self._snapshots = {}
        # Only the logins of principals that changed are dropped: an
        # unrelated write must not send every user back to Argon2.
        for principal_id in changed:
            self._changed_at[principal_id] = self._cache_generation
        if len(self._changed_at) > CACHE_MAX_ENTRIES:
            self._changed_at = {}
            self._cache_floor = self._cache_generation
        self._verified = {
            key: entry for key, entry in self._verified.items() if entry[0].id not in changed
        }

    def _unchanged_since(self, principal_id, generation):
        # Whether a verification that started at generation may be kept.
        return generation >= self._cache_floor and (
            self._changed_at.get(principal_id, 0) <= generation
        )

    # Reading.

    def get(self, name):
        """
        @return: a Deferred firing with the L{Principal} named C{name}, or None.
        """
        try:
            name = _lookup_name(name)
        except DirectoryError as error:
            return fail(error)
        return self._read_one(schema.principals.c.name == name)

    def get_by_id(self, principal_id):
        """
        @return: a Deferred firing with the L{Principal} of that id, or None.
        """
        return self._read_one(schema.principals.c.id == principal_id)

    def lookup_address(self, address):
        """
        @return: a Deferred firing with the L{Principal} that has C{address}
            as its primary address or an alias (any case), or None.
        """
        if not isinstance(address, str):
            return fail(InvalidPrincipal(f"an address must be a string, not {address!r}"))
        return self._read_one(_by_address(address.lower()))

    def list(self, kind=None):
        """
        @return: a Deferred firing with the principals (of C{kind}, if given),
            sorted by name.
        """
        p = schema.principals
        try:
            condition = true() if kind is None else p.c.kind == _check_kind(kind)
        except DirectoryError as error:
            return fail(error)
        return self._store.read(_load, condition)

    def snapshot(self, principal_ids=None):
        """
        Read principals and the directory's state in one transaction, so
        the state is exactly that of what was read.

        @param principal_ids: the ids wanted, or None for all.
        @return: a Deferred firing with C{(modseq, principals, member name
            -> id)}, which callers must not change: it may be served again.
        """
        key = None if principal_ids is None else frozenset(principal_ids)
        cached = self._snapshots.get(key)
        if cached is not None:
            return succeed(cached)
        generation = self._cache_generation

        def remember(snapshot):
            # Not if the directory changed while it was read.
            if generation == self._cache_generation:
                if len(self._snapshots) >= SNAPSHOT_CACHE_MAX_ENTRIES:
                    self._snapshots = {}
                self._snapshots[key] = snapshot
            return snapshot

        return self._store.read(_snapshot, principal_ids).addCallback(remember)

    def groups_of(self, principal_id):
        """
        @return: a Deferred firing with the ids of the groups that have
            C{principal_id} as a direct member, sorted.
        """
        return self._store.read(_group_ids_of, principal_id)

    def _read_one(self, condition):
        return self._store.read(_load_one, condition)

    # Writing.

    def modseq(self):
        """
        @return: a Deferred firing with the directory's Principal modseq.
        """
        return self._store.read(type_modseq, DIRECTORY_ACCOUNT, CHANGE_TYPE)

    def now(self):
        """
        @return: the time, in whole seconds, that creations are stamped with.
        """
        return int(self._clock.seconds())

    @inlineCallbacks
    def create_principal(
        self, kind, name, secret=None, description=None, email=None,
        aliases=(), members=(), quota=0, timezone=None,
    ):
        """
        Create a principal.

        @return: a Deferred firing with the new L{Principal}.
        """
        new = _new_principal(
            kind, name, secret, description, email, aliases, members, quota, timezone
        )
        secret_hash = (yield self._hash(secret)) if secret is not None else None
        new = replace(new, secret_hash=secret_hash, created_at=self.now())
        principal = yield self._write(_build_create, new)
        self.log.info("directory: created {kind} {name!r}", kind=new.kind, name=new.name)
        return principal

    @inlineCallbacks
    def update(self, name, /, **changes):
        """
        Change any of C{name}, C{secret} (None removes it), C{description},
        C{email} (the primary address; None removes it), C{quota},
        C{timezone}.

        @return: a Deferred firing with the updated L{Principal}.
        """
        name = _lookup_name(name)
        changes = _check_changes(changes)
        if "secret" in changes:
            secret = changes.pop("secret")
            changes["secret_hash"] = (yield self._hash(secret)) if secret is not None else None
        principal = yield self._write(_build_update, name, changes)
        self.log.info(
            "directory: updated {name!r} ({fields})", name=name,
            fields=", ".join(sorted(field.replace("_hash", "") for field in changes)),
        )
        return principal

    @inlineCallbacks
    def replace(self, name, /, changes=None, addresses=None, members=None):
        """
        Change a principal as one atomic write: the fields C{update} takes
        (but C{email}), its whole set of addresses, and its whole
        membership.

        @param addresses: C{(primary address or None, aliases)}, or None to
            leave them.
        @param members: the names of all its members, or None to leave them.
        @return: a Deferred firing with the updated L{Principal}.
        """
        name = _lookup_name(name)
        changes, addresses, members = _check_replace(changes, addresses, members)
        if "secret" in changes:
            secret = changes.pop("secret")
            changes["secret_hash"] = (yield self._hash(secret)) if secret is not None else None
        principal = yield self._write(_build_replace, name, changes, addresses, members)
        self.log.info("directory: changed {name!r}", name=name)
        return principal

    @inlineCallbacks
    def delete(self, name):
        """
        Delete a principal with its addresses and memberships. A domain
        is only deleted once no address uses it.

        @return: a Deferred firing with None.
        """
        name = _lookup_name(name)
        yield self._write(_build_delete, name)
        self.log.info("directory: deleted {name!r}", name=name)

    def add_alias(self, name, address):
        """
        @return: a Deferred firing with the L{Principal} with the new alias.
        """
        return self._write_checked(_build_add_alias, name, lambda: _check_address(address)[0])

    def remove_alias(self, name, address):
        """
        @return: a Deferred firing with the L{Principal} without the alias.
        """
        return self._write_checked(_build_remove_alias, name, lambda: _check_address(address)[0])

    def add_member(self, group, member):
        """
        @return: a Deferred firing with the group or list, C{member} added.
        """
        return self._write_checked(_build_add_member, group, lambda: _lookup_name(member))

    def remove_member(self, group, member):
        """
        @return: a Deferred firing with the group or list, C{member} removed.
        """
        return self._write_checked(_build_remove_member, group, lambda: _lookup_name(member))

    def _write_checked(self, build, name, second):
        try:
            args = (_lookup_name(name), second())
        except DirectoryError as error:
            return fail(error)
        return self._write(build, *args)

    @inlineCallbacks
    def _write(self, build, *args):
        written = yield self._writer.write(
            DIRECTORY_ACCOUNT, plan_directory_change, build, args
        )
        if written.outcome is None:
            return None
        principal = yield self._store.read(_load_one, schema.principals.c.id == written.outcome)
        return principal

    # Secrets.

    def _in_thread(self, function, *args):
        if self._hash_pool is None:
            return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), function, *args)
        return deferToThreadPool(self._reactor, self._hash_pool, _yielding, function, *args)

    def _hash(self, secret):
        return self._in_thread(self._hasher.hash, secret)

    def hash_secret(self, secret):
        """
        @return: a Deferred firing with the Argon2id hash of C{secret},
            computed on the hash threads.
        """
        return self._hash(secret)

    def _verify(self, secret_hash, password):
        # Runs on a hash thread.
        known = secret_hash is not None
        if not known:
            # Unknown login: spend the same time as a real check.
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
            secret_hash = self._dummy_hash
        try:
            matched = self._hasher.verify(secret_hash, password)
        except (VerificationError, InvalidHashError):
            matched = False
        return matched and known

    def _digest(self, password):
        return blake3(password.encode("utf-8"), key=self._cache_key).digest()

    @inlineCallbacks
    def authenticate(self, login, password):
        """
        Check a login (a name or any address of the principal) and its
        password. Only individuals with a secret can log in.

        @return: a Deferred firing with the L{Principal}, or None; or
            failing at once with L{VerificationsBusy}.
        """
        if not isinstance(login, str) or not isinstance(password, str) or not password:
            return None
        login = login.lower()
        key = (login, self._digest(password))
        cached = self._cached(key)
        if cached is not None:
            return cached
        if self._max_verifications is not None and self.verifying >= self._max_verifications:
            raise VerificationsBusy(
                f"{self.verifying} password checks are already in progress"
            )
        generation = self._cache_generation
        self.verifying += 1
        try:
            principal, secret_hash = yield self._store.read(_load_credentials, login)
            verified = yield self._in_thread(self._verify, secret_hash, password)
        finally:
            self.verifying -= 1
        if not verified or principal is None:
            return None
        if self._unchanged_since(principal.id, generation):
            self._remember(key, principal)
        return principal

    def recently_verified(self, login, password):
        """
        @return: the L{Principal} of a login and password verified within
            the last few seconds (and the directory unchanged since), else
            C{None}: then L{authenticate} has to check them.
        """
        if not isinstance(login, str) or not isinstance(password, str):
            return None
        return self._cached((login.lower(), self._digest(password)))

    def _cached(self, key):
        entry = self._verified.get(key)
        if entry is None:
            return None
        principal, expires_at = entry
        if self._clock.seconds() >= expires_at:
            del self._verified[key]
            return None
        return principal

    def _remember(self, key, principal):
        now = self._clock.seconds()
        if len(self._verified) >= CACHE_MAX_ENTRIES:
            self._verified = {k: v for k, v in self._verified.items() if v[1] > now}
            while len(self._verified) >= CACHE_MAX_ENTRIES:
                # Oldest first: dicts keep insertion order.
                del self._verified[next(iter(self._verified))]
        self._verified[key] = (principal, now + CACHE_SECONDS)

    @inlineCallbacks
    def ensure_admin(self, secret=None):
        """
        Make sure the individual C{admin} exists. At first start it is
        created with C{secret}, or with a generated password that is shown
        once through C{show} (the terminal), never logged
        once. When it exists and C{secret} is given but does not match, the
        stored secret is replaced: the operator resets it through the
        configuration.

        @return: a Deferred firing with C{(principal, generated password or
            None)}.
        """
        if self._dummy_hash is None:
            # Made now so that the first unknown login costs what others do.
            self._dummy_hash = yield self._in_thread(
                self._hasher.hash, secrets.token_urlsafe(16)
            )
        admin = yield self.get(ADMIN_NAME)
        if admin is None:
            generated = secrets.token_urlsafe(18) if secret is None else None
            admin = yield self.create_principal(
                INDIVIDUAL, ADMIN_NAME, secret=generated if secret is None else secret,
                description="server administrator",
            )
            if generated is not None:
                self._show(
                    f"stalwart: created the admin principal; its password is {generated} "
                    "(shown once)\n"
                )
                self.log.warn(
                    "created the admin principal with a generated password, shown once "
                    "on the terminal and written to no log; set admin-secret to choose one"
                )
            return admin, generated
        if admin.kind != INDIVIDUAL:
            raise InvalidPrincipal(f"{ADMIN_NAME!r} is a {admin.kind}, not an individual")
        if secret is not None and (yield self.authenticate(ADMIN_NAME, secret)) is None:
            admin = yield self.update(ADMIN_NAME, secret=secret)
            self.log.warn("reset the admin password from the configuration")
        return admin, None


__all__ = [
    "ADMIN_NAME",
    "AddressInUse",
    "Directory",
    "DirectoryError",
    "DOMAIN",
    "GROUP",
    "INDIVIDUAL",
    "InvalidPrincipal",
    "KINDS",
    "LIST",
    "Principal",
    "PrincipalExists",
    "PrincipalNotFound",
    "VerificationsBusy",
]
