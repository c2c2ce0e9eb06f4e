"""
Tests for stalwart_tw.store.directory, on a real store and a real LocalNode.
"""

from argon2 import PasswordHasher
from sqlalchemy import select
from twisted.internet import defer, task
from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs
from twisted.trial import unittest

from stalwart_tw.store import schema
from stalwart_tw.store.batch import WriteBatch
from stalwart_tw.store.changes import account_modseq
from stalwart_tw.store.directory import (
    CACHE_SECONDS,
    AddressInUse,
    Directory,
    DirectoryError,
    InvalidPrincipal,
    PrincipalExists,
    PrincipalNotFound,
    VerificationsBusy,
)
from stalwart_tw.store.errors import BatchConflict
from stalwart_tw.store.schema import DIRECTORY_ACCOUNT
from stalwart_tw.writer import AccountWriter
from tests.support import open_store_and_node


class CountingHasher(PasswordHasher):
    """
    A cheap Argon2id hasher that counts how often it works.
    """

    def __init__(self):
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifications = 0
        self.hashes = 0

    def verify(self, hash, password):
        self.verifications += 1
        return super().verify(hash, password)

    def hash(self, password, *, salt=None):
        self.hashes += 1
        return super().hash(password, salt=salt)


class InterferingNode:
    """
    A node that, before the next C{times} commits, commits another directory
    change, so that those batches were built on stale state.
    """

    def __init__(self, node, times):
        self._node = node
        self.times = times
        self.commits = 0

    def serialised(self, key, function, *args, **kwargs):
        return self._node.serialised(key, function, *args, **kwargs)

    def add_listener(self, listener):
        self._node.add_listener(listener)

    @inlineCallbacks
    def commit(self, batch):
        self.commits += 1
        if self.times:
            self.times -= 1
            other = WriteBatch().log_change(DIRECTORY_ACCOUNT, "Principal", "999", "updated")
            yield self._node.commit(other)
        result = yield self._node.commit(batch)
        return result


class DirectoryTestCase(unittest.TestCase):
    """
    A directory over a fresh store, a LocalNode and a task.Clock.
    """

    @inlineCallbacks
    def setUp(self):
        self.store, self.node = yield open_store_and_node(self)
        self.clock = task.Clock()
        self.hasher = CountingHasher()
        self.directory = self.make_directory(self.node)

    def make_directory(self, node):
        return Directory(
            self.store, AccountWriter(self.store, node), clock=self.clock,
            password_hasher=self.hasher,
        )

    def modseq(self):
        return self.store.read(account_modseq, DIRECTORY_ACCOUNT)

    def changelog(self):
        log = schema.changelog
        return self.store.read(
            lambda connection: [
                tuple(row)
                for row in connection.execute(
                    select(log.c.modseq, log.c.type_name, log.c.object_id, log.c.kind)
                    .where(log.c.account_id == DIRECTORY_ACCOUNT)
                    .order_by(log.c.seq)
                )
            ]
        )

    def rows(self, table):
        return self.store.read(
            lambda connection: [tuple(row) for row in connection.execute(select(table))]
        )

    @inlineCallbacks
    def assert_refused(self, deferred, error_type, *fragments):
        """
        Wait for C{deferred} to fail with C{error_type}, whose message holds
        every fragment; and check that nothing was committed.
        """
        before = yield self.modseq()
        error = yield self.assertFailure(deferred, error_type)
        self.assertIsInstance(error, DirectoryError)
        for fragment in fragments:
            self.assertIn(fragment, str(error))
        self.assertEqual((yield self.modseq()), before)
        return error

    @inlineCallbacks
    def populate(self):
        """
        A domain, two individuals, a group and a list.
        """
        yield self.directory.create_principal("domain", "example.org")
        yield self.directory.create_principal(
            "individual", "alice", secret="alice-pw", email="alice@example.org",
            aliases=["al@example.org"],
        )
        yield self.directory.create_principal(
            "individual", "bob", secret="bob-password", email="bob@example.org"
        )
        yield self.directory.create_principal("group", "staff", members=["alice"])
        yield self.directory.create_principal(
            "list", "news", email="news@example.org", members=["bob", "staff"]
        )


class PrincipalTests(DirectoryTestCase):
    """
    Creating, reading, listing and updating principals.
    """

    @inlineCallbacks
    def test_create_individual(self):
        """An individual is created with every field and read back by name."""
        yield self.directory.create_principal("domain", "example.org")
        self.clock.advance(1234)
        created = yield self.directory.create_principal(
            "individual", "alice", secret="password", description="Alice", email="alice@example.org",
            aliases=("a@example.org",), quota=1000, timezone="Europe/Paris",
        )
        self.assertEqual(created.kind, "individual")
        self.assertEqual(created.name, "alice")
        self.assertEqual(created.description, "Alice")
        self.assertEqual(created.email, "alice@example.org")
        self.assertEqual(created.aliases, ("a@example.org",))
        self.assertEqual(created.quota, 1000)
        self.assertEqual(created.timezone, "Europe/Paris")
        self.assertEqual(created.created_at, 1234)
        self.assertEqual((yield self.directory.get("alice")), created)

    @inlineCallbacks
    def test_create_group(self):
        """A group is created with its members."""
        yield self.populate()
        staff = yield self.directory.get("staff")
        self.assertEqual((staff.kind, staff.members), ("group", ("alice",)))

    @inlineCallbacks
    def test_create_list(self):
        """A list is created with an address and individuals and groups as members."""
        yield self.populate()
        news = yield self.directory.get("news")
        self.assertEqual(news.kind, "list")
        self.assertEqual(news.email, "news@example.org")
        self.assertEqual(news.members, ("bob", "staff"))

    @inlineCallbacks
    def test_create_domain(self):
        """A domain is created under its lower-cased name."""
        domain = yield self.directory.create_principal("domain", "Example.ORG")
        self.assertEqual((domain.kind, domain.name), ("domain", "example.org"))
        self.assertEqual((yield self.directory.get("example.org")), domain)

    @inlineCallbacks
    def test_names_are_case_insensitive(self):
        """Names are stored lower-case and found in any case."""
        yield self.directory.create_principal("individual", "Alice")
        found = yield self.directory.get("ALICE")
        self.assertEqual(found.name, "alice")

    @inlineCallbacks
    def test_get_unknown(self):
        """get() of an unknown name answers None."""
        self.assertIsNone((yield self.directory.get("nobody")))

    @inlineCallbacks
    def test_get_by_id(self):
        """Ids are max(id) + 1 and get_by_id finds each principal."""
        yield self.populate()
        for principal_id, name in enumerate(["example.org", "alice", "bob", "staff", "news"], 1):
            self.assertEqual((yield self.directory.get_by_id(principal_id)).name, name)
        self.assertIsNone((yield self.directory.get_by_id(99)))

    @inlineCallbacks
    def test_list(self):
        """list() sorts by name and filters by kind."""
        yield self.populate()
        everyone = yield self.directory.list()
        self.assertEqual(
            [p.name for p in everyone], ["alice", "bob", "example.org", "news", "staff"]
        )
        individuals = yield self.directory.list("individual")
        self.assertEqual([p.name for p in individuals], ["alice", "bob"])
        self.assertEqual([p.name for p in (yield self.directory.list("domain"))], ["example.org"])

    @inlineCallbacks
    def test_update_fields(self):
        """update() changes description, quota and time zone, and can clear them."""
        yield self.populate()
        updated = yield self.directory.update(
            "alice", description="Alice A.", quota=5, timezone="America/New_York"
        )
        self.assertEqual(
            (updated.description, updated.quota, updated.timezone),
            ("Alice A.", 5, "America/New_York"),
        )
        cleared = yield self.directory.update("alice", description=None, timezone=None)
        self.assertEqual((cleared.description, cleared.timezone), (None, None))

    @inlineCallbacks
    def test_rename(self):
        """A rename keeps the id, addresses and memberships."""
        yield self.populate()
        alice = yield self.directory.get("alice")
        renamed = yield self.directory.update("alice", name="alicia")
        self.assertEqual((renamed.id, renamed.email), (alice.id, alice.email))
        self.assertIsNone((yield self.directory.get("alice")))
        self.assertEqual((yield self.directory.get("staff")).members, ("alicia",))

    @inlineCallbacks
    def test_rename_unused_domain(self):
        """A domain without addresses can be renamed."""
        yield self.directory.create_principal("domain", "example.org")
        renamed = yield self.directory.update("example.org", name="example.net")
        self.assertEqual(renamed.name, "example.net")

    @inlineCallbacks
    def test_change_primary_email(self):
        """The primary address can be replaced, taken from an alias, or removed."""
        yield self.populate()
        moved = yield self.directory.update("alice", email="alice2@example.org")
        self.assertEqual(moved.email, "alice2@example.org")
        self.assertIsNone((yield self.directory.lookup_address("alice@example.org")))
        promoted = yield self.directory.update("alice", email="AL@example.org")
        self.assertEqual((promoted.email, promoted.aliases), ("al@example.org", ()))
        removed = yield self.directory.update("alice", email=None)
        self.assertIsNone(removed.email)

    @inlineCallbacks
    def test_repr_hides_secret(self):
        """A Principal carries no secret, so its repr shows no hash."""
        yield self.populate()
        alice = yield self.directory.get("alice")
        self.assertNotIn("argon2", repr(alice))
        self.assertNotIn("secret", repr(alice))


class AliasTests(DirectoryTestCase):
    """
    Addresses: aliases, lookups, uniqueness.
    """

    @inlineCallbacks
    def test_lookup_by_alias_any_case(self):
        """lookup_address finds a principal by its primary address or alias, in any case."""
        yield self.populate()
        self.assertEqual((yield self.directory.lookup_address("AL@Example.Org")).name, "alice")
        self.assertEqual((yield self.directory.lookup_address("Alice@example.org")).name, "alice")
        self.assertIsNone((yield self.directory.lookup_address("nobody@example.org")))

    @inlineCallbacks
    def test_add_alias(self):
        """add_alias stores the address lower-case and it is found."""
        yield self.populate()
        alice = yield self.directory.add_alias("alice", "Second@Example.org")
        self.assertEqual(alice.aliases, ("al@example.org", "second@example.org"))
        self.assertEqual((yield self.directory.lookup_address("second@example.org")).id, alice.id)

    @inlineCallbacks
    def test_remove_alias(self):
        """remove_alias frees the address."""
        yield self.populate()
        alice = yield self.directory.remove_alias("alice", "al@example.org")
        self.assertEqual(alice.aliases, ())
        self.assertIsNone((yield self.directory.lookup_address("al@example.org")))

    @inlineCallbacks
    def test_alias_of_unknown_domain_refused(self):
        """An alias whose domain is not a domain principal is refused."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.add_alias("alice", "a@example.net"), InvalidPrincipal, "example.net"
        )

    @inlineCallbacks
    def test_email_of_unknown_domain_refused(self):
        """A primary address whose domain is unknown is refused at creation."""
        yield self.assert_refused(
            self.directory.create_principal("individual", "carol", email="c@nowhere.org"),
            InvalidPrincipal, "nowhere.org",
        )
        self.assertIsNone((yield self.directory.get("carol")))

    @inlineCallbacks
    def test_address_in_use_refused(self):
        """An address of another principal is refused as alias, e-mail or at creation."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.add_alias("bob", "AL@example.org"),
            AddressInUse, "al@example.org", "alice"
        )
        yield self.assert_refused(
            self.directory.update("bob", email="alice@example.org"), AddressInUse, "alice"
        )
        yield self.assert_refused(
            self.directory.create_principal("individual", "carol", aliases=["bob@example.org"]),
            AddressInUse, "bob@example.org",
        )

    @inlineCallbacks
    def test_own_address_refused_as_alias(self):
        """Adding an address the principal already has is refused."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.add_alias("alice", "alice@example.org"),
            AddressInUse, "already an address"
        )

    @inlineCallbacks
    def test_address_given_twice_refused(self):
        """The same address twice in one create is refused."""
        yield self.directory.create_principal("domain", "example.org")
        yield self.assert_refused(
            self.directory.create_principal(
                "individual", "carol", email="c@example.org", aliases=["C@example.org"]
            ),
            InvalidPrincipal, "c@example.org",
        )

    @inlineCallbacks
    def test_remove_alias_not_an_alias_refused(self):
        """Removing an address that is not the principal's alias is refused."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.remove_alias("bob", "al@example.org"), InvalidPrincipal, "not an alias"
        )

    @inlineCallbacks
    def test_remove_primary_as_alias_refused(self):
        """remove_alias does not remove the primary address."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.remove_alias("alice", "alice@example.org"), InvalidPrincipal, "primary"
        )

    @inlineCallbacks
    def test_domain_addresses_refused(self):
        """A domain cannot have an e-mail address or alias."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.add_alias("example.org", "x@example.org"), InvalidPrincipal, "domain"
        )
        yield self.assert_refused(
            self.directory.update("example.org", email="x@example.org"), InvalidPrincipal, "domain"
        )
        yield self.assert_refused(
            self.directory.create_principal("domain", "example.net", email="x@example.org"),
            InvalidPrincipal, "example.net",
        )


class MembershipTests(DirectoryTestCase):
    """
    Members of groups and lists.
    """

    @inlineCallbacks
    def test_add_and_remove_member(self):
        """add_member and remove_member change a group's members."""
        yield self.populate()
        staff = yield self.directory.add_member("staff", "Bob")
        self.assertEqual(staff.members, ("alice", "bob"))
        staff = yield self.directory.remove_member("staff", "alice")
        self.assertEqual(staff.members, ("bob",))

    @inlineCallbacks
    def test_nested_group(self):
        """A group may hold another group."""
        yield self.populate()
        yield self.directory.create_principal("group", "all")
        all_ = yield self.directory.add_member("all", "staff")
        self.assertEqual(all_.members, ("staff",))

    @inlineCallbacks
    def test_unknown_member_refused(self):
        """A member that does not exist is refused, at creation and later."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.add_member("staff", "nobody"), PrincipalNotFound, "nobody"
        )
        yield self.assert_refused(
            self.directory.create_principal("group", "team", members=["ghost"]),
            PrincipalNotFound, "ghost",
        )

    @inlineCallbacks
    def test_self_membership_refused(self):
        """A group cannot hold itself, at creation or later."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.add_member("staff", "staff"), InvalidPrincipal, "itself"
        )
        yield self.assert_refused(
            self.directory.create_principal("group", "loop", members=["loop"]),
            InvalidPrincipal, "itself",
        )

    @inlineCallbacks
    def test_cycle_refused(self):
        """A group cannot hold a group that already contains it."""
        yield self.populate()
        yield self.directory.create_principal("group", "all", members=["staff"])
        yield self.assert_refused(
            self.directory.add_member("staff", "all"), InvalidPrincipal, "all", "contains"
        )

    @inlineCallbacks
    def test_members_only_for_groups_and_lists(self):
        """An individual or domain cannot have members."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.add_member("alice", "bob"), InvalidPrincipal, "alice", "individual"
        )
        yield self.assert_refused(
            self.directory.create_principal("individual", "carol", members=["bob"]),
            InvalidPrincipal, "carol",
        )

    @inlineCallbacks
    def test_member_kinds_refused(self):
        """Neither a domain nor a list can be a member; a group cannot hold a list."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.add_member("staff", "example.org"), InvalidPrincipal, "domain"
        )
        yield self.assert_refused(
            self.directory.add_member("staff", "news"), InvalidPrincipal, "news", "list"
        )
        yield self.directory.create_principal("list", "other")
        yield self.assert_refused(
            self.directory.add_member("other", "news"), InvalidPrincipal, "news"
        )

    @inlineCallbacks
    def test_already_member_refused(self):
        """Adding a member twice is refused."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.add_member("staff", "alice"), InvalidPrincipal, "already a member"
        )

    @inlineCallbacks
    def test_remove_non_member_refused(self):
        """Removing a principal that is not a member is refused."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.remove_member("staff", "bob"), InvalidPrincipal, "not a member"
        )


class SecretTests(DirectoryTestCase):
    """
    Argon2id secrets and logins.
    """

    def secret_of(self, name):
        p = schema.principals
        return self.store.read(
            lambda connection: connection.execute(
                select(p.c.secret).where(p.c.name == name)
            ).scalar()
        )

    @inlineCallbacks
    def test_secret_is_argon2id(self):
        """The stored secret is an Argon2id PHC string, not the password."""
        yield self.populate()
        secret = yield self.secret_of("alice")
        self.assertTrue(secret.startswith("$argon2id$"))
        self.assertNotIn("alice-pw", secret)

    @inlineCallbacks
    def test_right_password(self):
        """The right password authenticates, by name in any case."""
        yield self.populate()
        self.assertEqual((yield self.directory.authenticate("Alice", "alice-pw")).name, "alice")

    @inlineCallbacks
    def test_wrong_password(self):
        """A wrong or empty password does not authenticate."""
        yield self.populate()
        self.assertIsNone((yield self.directory.authenticate("alice", "bob-password")))
        self.assertIsNone((yield self.directory.authenticate("alice", "")))

    @inlineCallbacks
    def test_login_by_address(self):
        """A login may be the primary address or an alias."""
        yield self.populate()
        self.assertEqual(
            (yield self.directory.authenticate("ALICE@example.org", "alice-pw")).name, "alice"
        )
        by_alias = yield self.directory.authenticate("al@example.org", "alice-pw")
        self.assertEqual(by_alias.name, "alice")

    @inlineCallbacks
    def test_unknown_login(self):
        """An unknown login is refused after a dummy verification."""
        yield self.populate()
        before = self.hasher.verifications
        self.assertIsNone((yield self.directory.authenticate("nobody", "pw")))
        self.assertEqual(self.hasher.verifications, before + 1)

    @inlineCallbacks
    def test_group_cannot_log_in(self):
        """Groups and lists cannot log in, nor have a secret."""
        yield self.populate()
        self.assertIsNone((yield self.directory.authenticate("staff", "anything")))
        self.assertIsNone((yield self.directory.authenticate("news@example.org", "x")))
        yield self.assert_refused(
            self.directory.create_principal("group", "team", secret="password"), InvalidPrincipal, "team"
        )
        yield self.assert_refused(
            self.directory.update("staff", secret="password"), InvalidPrincipal, "staff"
        )

    @inlineCallbacks
    def test_no_secret_cannot_log_in(self):
        """An individual without a secret, or whose secret was removed, cannot log in."""
        yield self.populate()
        yield self.directory.create_principal("individual", "carol")
        self.assertIsNone((yield self.directory.authenticate("carol", "anything")))
        yield self.directory.update("alice", secret=None)
        self.assertIsNone((yield self.directory.authenticate("alice", "alice-pw")))

    @inlineCallbacks
    def test_change_secret(self):
        """After update(secret=...), only the new password works."""
        yield self.populate()
        yield self.directory.update("alice", secret="new-password")
        self.assertIsNone((yield self.directory.authenticate("alice", "alice-pw")))
        self.assertEqual((yield self.directory.authenticate("alice", "new-password")).name, "alice")


class CacheTests(DirectoryTestCase):
    """
    The cache of successful verifications.
    """

    @inlineCallbacks
    def test_second_login_cached(self):
        """A second login within the cache time does not run Argon2 again."""
        yield self.populate()
        yield self.directory.authenticate("alice", "alice-pw")
        before = self.hasher.verifications
        self.clock.advance(CACHE_SECONDS - 1)
        self.assertEqual((yield self.directory.authenticate("alice", "alice-pw")).name, "alice")
        self.assertEqual(self.hasher.verifications, before)

    @inlineCallbacks
    def test_cache_expires(self):
        """After the cache time, the password is verified again."""
        yield self.populate()
        yield self.directory.authenticate("alice", "alice-pw")
        before = self.hasher.verifications
        self.clock.advance(CACHE_SECONDS + 1)
        self.assertEqual((yield self.directory.authenticate("alice", "alice-pw")).name, "alice")
        self.assertEqual(self.hasher.verifications, before + 1)

    @inlineCallbacks
    def test_wrong_password_not_cached(self):
        """A wrong password is verified every time and never served from the cache."""
        yield self.populate()
        yield self.directory.authenticate("alice", "alice-pw")
        before = self.hasher.verifications
        for _ in range(2):
            self.assertIsNone((yield self.directory.authenticate("alice", "wrong")))
        self.assertEqual(self.hasher.verifications, before + 2)

    @inlineCallbacks
    def test_changed_secret_invalidates(self):
        """Changing the secret drops the cached success of the old password."""
        yield self.populate()
        yield self.directory.authenticate("alice", "alice-pw")
        yield self.directory.authenticate("al@example.org", "alice-pw")
        yield self.directory.update("alice", secret="new-password")
        before = self.hasher.verifications
        self.assertIsNone((yield self.directory.authenticate("alice", "alice-pw")))
        self.assertIsNone((yield self.directory.authenticate("al@example.org", "alice-pw")))
        self.assertEqual(self.hasher.verifications, before + 2)

    @inlineCallbacks
    def test_rename_and_delete_invalidate(self):
        """Renaming or deleting a principal drops its cached logins."""
        yield self.populate()
        yield self.directory.authenticate("alice", "alice-pw")
        yield self.directory.update("alice", name="alicia")
        self.assertIsNone((yield self.directory.authenticate("alice", "alice-pw")))
        yield self.directory.authenticate("alicia", "alice-pw")
        yield self.directory.delete("alicia")
        self.assertIsNone((yield self.directory.authenticate("alicia", "alice-pw")))

    @inlineCallbacks
    def test_change_applied_elsewhere_invalidates(self):
        """A principal change that reaches the node by another path drops the cache."""
        yield self.populate()
        alice = yield self.directory.authenticate("alice", "alice-pw")
        replacement = self.hasher.hash("changed-elsewhere")
        batch = WriteBatch().update("principals", {"id": alice.id}, secret=replacement)
        batch.log_change(DIRECTORY_ACCOUNT, "Principal", str(alice.id), "updated")
        yield self.node.commit(batch)
        self.assertIsNone((yield self.directory.authenticate("alice", "alice-pw")))
        self.assertEqual(
            (yield self.directory.authenticate("alice", "changed-elsewhere")).name, "alice"
        )

    @inlineCallbacks
    def test_snapshot_served_until_a_change(self):
        """
        A snapshot read again is the same until the directory changes, by
        this object or another path; then it is what the store holds.
        """
        yield self.populate()
        alice = yield self.directory.get("alice")
        modseq, found, _ = yield self.directory.snapshot({alice.id})
        reads = []
        real_read = self.store.read
        self.patch(self.store, "read", lambda *a, **k: reads.append(a) or real_read(*a, **k))
        self.assertEqual((yield self.directory.snapshot({alice.id}))[1], found)
        self.assertEqual(reads, [])
        batch = WriteBatch().update("principals", {"id": alice.id}, description="elsewhere")
        batch.log_change(DIRECTORY_ACCOUNT, "Principal", str(alice.id), "updated")
        yield self.node.commit(batch)
        new_modseq, (changed,), _ = yield self.directory.snapshot({alice.id})
        self.assertEqual((changed.description, len(reads)), ("elsewhere", 1))
        self.assertGreater(new_modseq, modseq)
        yield self.directory.update("alice", description="here")
        self.assertEqual((yield self.directory.snapshot({alice.id}))[1][0].description, "here")

    @inlineCallbacks
    def test_unrelated_change_keeps_the_cache(self):
        """A change to other principals (bob, the group alice is in) leaves alice's login cached."""
        yield self.populate()
        yield self.directory.authenticate("alice", "alice-pw")
        yield self.directory.update("bob", description="changed")
        yield self.directory.create_principal("individual", "carol")
        yield self.directory.update("staff", description="the staff")
        before = self.hasher.verifications
        self.assertEqual((yield self.directory.authenticate("alice", "alice-pw")).name, "alice")
        self.assertEqual(self.hasher.verifications, before)
        # The changed principal's own login is checked again.
        yield self.directory.authenticate("bob", "bob-password")
        yield self.directory.update("bob", description="again")
        yield self.directory.authenticate("bob", "bob-password")
        self.assertEqual(self.hasher.verifications, before + 2)

    @inlineCallbacks
    def test_change_during_a_verification(self):
        """A verification in flight while its principal changes is not cached; while another changes, it is."""
        import threading

        from twisted.internet import reactor

        yield self.populate()
        real_verify = self.directory._verify
        applied = threading.Event()
        self.node.add_listener(lambda result: applied.set())
        changing = []

        def verify_while_changing(secret_hash, password):
            # On the hash thread: the change commits and is applied before
            # Argon2's answer reaches the reactor.
            matched = real_verify(secret_hash, password)
            applied.clear()
            reactor.callFromThread(changing.pop(0))
            applied.wait(10)
            return matched

        for name, cached in (("bob", True), ("alice", False)):
            self.directory._verified.clear()
            changing.append(lambda name=name: self.directory.update(name, description=name))
            self.patch(self.directory, "_verify", verify_while_changing)
            self.assertIsNotNone((yield self.directory.authenticate("alice", "alice-pw")))
            self.patch(self.directory, "_verify", real_verify)
            self.assertEqual(bool(self.directory._verified), cached, name)

    @inlineCallbacks
    def test_verifications_bounded(self):
        """Past max_verifications in progress a check fails at once; once they end, checks run again."""
        import threading

        yield self.populate()
        directory = Directory(
            self.store, AccountWriter(self.store, self.node), clock=self.clock,
            password_hasher=self.hasher, max_verifications=2,
        )
        release = threading.Event()
        real_verify = directory._verify

        def slow_verify(secret_hash, password):
            release.wait(10)
            return real_verify(secret_hash, password)

        self.patch(directory, "_verify", slow_verify)
        waiting = [directory.authenticate("alice", "wrong-one") for _ in range(2)]
        busy = directory.authenticate("bob", "bob-password")
        failure = self.failureResultOf(busy, VerificationsBusy)
        self.assertIn("2 password checks", failure.getErrorMessage())
        release.set()
        self.assertEqual((yield defer.gatherResults(waiting)), [None, None])
        self.assertEqual(directory.verifying, 0)
        self.assertEqual((yield directory.authenticate("bob", "bob-password")).name, "bob")

    @inlineCallbacks
    def test_cache_holds_no_password(self):
        """The cache keys hold a keyed digest, never the password."""
        yield self.populate()
        yield self.directory.authenticate("alice", "alice-pw")
        for login, digest in self.directory._verified:
            self.assertEqual(login, "alice")
            self.assertNotIn(b"alice-pw", digest)
            self.assertEqual(len(digest), 32)


class AdminTests(DirectoryTestCase):
    """
    ensure_admin at start-up.
    """

    @inlineCallbacks
    def test_generates_once(self):
        """The first start creates admin with a generated password, shown once and never logged."""
        shown = []
        self.directory._show = shown.append
        with capturedLogs() as events:
            admin, password = yield self.directory.ensure_admin(None)
            again, second = yield self.directory.ensure_admin(None)
        self.assertEqual(admin.name, "admin")
        self.assertTrue(password)
        self.assertEqual((again.id, second), (admin.id, None))
        self.assertEqual((yield self.directory.authenticate("admin", password)).id, admin.id)
        self.assertEqual(len(shown), 1)
        self.assertIn(f"its password is {password} (shown once)", shown[0])
        logged = " ".join(repr(event) for event in events)
        self.assertNotIn(password, logged)
        self.assertIn("generated password", logged)
        self.assertEqual(len((yield self.directory.list())), 1)

    @inlineCallbacks
    def test_configured_secret(self):
        """With a configured secret, nothing is generated and that secret logs in."""
        admin, password = yield self.directory.ensure_admin("configured")
        self.assertIsNone(password)
        self.assertEqual((yield self.directory.authenticate("admin", "configured")).id, admin.id)

    @inlineCallbacks
    def test_matching_secret_is_left_alone(self):
        """A configured secret that already matches writes nothing."""
        yield self.directory.ensure_admin("configured")
        before = yield self.modseq()
        yield self.directory.ensure_admin("configured")
        self.assertEqual((yield self.modseq()), before)

    @inlineCallbacks
    def test_reset_from_configuration(self):
        """A configured secret that does not match replaces the stored one, logged."""
        yield self.directory.ensure_admin(None)
        with capturedLogs() as events:
            admin, password = yield self.directory.ensure_admin("reset-pw")
        self.assertIsNone(password)
        self.assertEqual((yield self.directory.authenticate("admin", "reset-pw")).id, admin.id)
        self.assertTrue(any("reset the admin password" in e.get("log_format", "") for e in events))

    @inlineCallbacks
    def test_admin_not_individual(self):
        """A principal named admin that is not an individual is reported."""
        yield self.directory.create_principal("group", "admin")
        yield self.assertFailure(self.directory.ensure_admin("x"), InvalidPrincipal)


class ChangeLogTests(DirectoryTestCase):
    """
    Every write is one batch that advances the directory's modseq and logs
    the principals it changed.
    """

    @inlineCallbacks
    def test_each_write_one_batch(self):
        """Each directory write advances the directory modseq by exactly one."""
        writes = [
            lambda: self.directory.create_principal("domain", "example.org"),
            lambda: self.directory.create_principal(
                "individual", "alice", secret="password", email="alice@example.org"
            ),
            lambda: self.directory.create_principal("group", "staff", members=["alice"]),
            lambda: self.directory.update("alice", quota=10),
            lambda: self.directory.add_alias("alice", "a@example.org"),
            lambda: self.directory.remove_alias("alice", "a@example.org"),
            lambda: self.directory.remove_member("staff", "alice"),
            lambda: self.directory.add_member("staff", "alice"),
            lambda: self.directory.delete("staff"),
        ]
        for expected, write in enumerate(writes, 1):
            yield write()
            self.assertEqual((yield self.modseq()), expected)

    @inlineCallbacks
    def test_changes_logged(self):
        """Creates, updates and deletes are logged as Principal changes."""
        yield self.populate()
        yield self.directory.update("bob", description="Bob")
        yield self.directory.delete("alice")
        log = yield self.changelog()
        self.assertEqual(log[:5], [(n, "Principal", str(n), "c") for n in range(1, 6)])
        self.assertEqual(log[5], (6, "Principal", "3", "u"))
        # Deleting alice also changes the group that held her.
        self.assertEqual(log[6:], [(7, "Principal", "4", "u"), (7, "Principal", "2", "d")])

    @inlineCallbacks
    def test_conflict_rebuilt_once(self):
        """A batch built on stale state is rebuilt once from fresh state."""
        yield self.populate()
        node = InterferingNode(self.node, times=1)
        directory = self.make_directory(node)
        updated = yield directory.update("alice", quota=7)
        self.assertEqual((updated.quota, node.commits), (7, 2))

    @inlineCallbacks
    def test_conflict_twice_fails(self):
        """A write that conflicts again after its rebuild fails with BatchConflict."""
        yield self.populate()
        node = InterferingNode(self.node, times=2)
        directory = self.make_directory(node)
        yield self.assertFailure(directory.update("alice", quota=7), BatchConflict)
        self.assertEqual(node.commits, 2)
        self.assertEqual((yield self.directory.get("alice")).quota, 0)


class DeleteTests(DirectoryTestCase):
    """
    Deleting principals.
    """

    @inlineCallbacks
    def test_delete_removes_addresses_and_memberships(self):
        """Deleting a principal frees its addresses and leaves every group it was in."""
        yield self.populate()
        alice = yield self.directory.get("alice")
        yield self.directory.delete("alice")
        self.assertIsNone((yield self.directory.get("alice")))
        self.assertIsNone((yield self.directory.lookup_address("al@example.org")))
        self.assertEqual((yield self.directory.get("staff")).members, ())
        emails = yield self.rows(schema.principal_emails)
        self.assertNotIn(alice.id, [row[1] for row in emails])
        # The address can be given to someone else.
        bob = yield self.directory.add_alias("bob", "alice@example.org")
        self.assertIn("alice@example.org", bob.aliases)

    @inlineCallbacks
    def test_delete_group_removes_its_memberships(self):
        """Deleting a group drops its members and its place in lists."""
        yield self.populate()
        yield self.directory.delete("staff")
        members = yield self.rows(schema.principal_members)
        bob = yield self.directory.get("bob")
        news = yield self.directory.get("news")
        self.assertEqual(members, [(news.id, bob.id)])
        self.assertEqual(news.members, ("bob",))

    @inlineCallbacks
    def test_delete_unknown(self):
        """Deleting, updating or aliasing an unknown principal fails with PrincipalNotFound."""
        yield self.assert_refused(self.directory.delete("ghost"), PrincipalNotFound, "ghost")
        yield self.assert_refused(
            self.directory.update("ghost", quota=1), PrincipalNotFound, "ghost"
        )
        yield self.assert_refused(
            self.directory.remove_member("ghost", "x"), PrincipalNotFound, "ghost"
        )

    @inlineCallbacks
    def test_delete_domain_in_use_refused(self):
        """A domain whose addresses are in use cannot be deleted or renamed."""
        yield self.populate()
        yield self.directory.add_alias("bob", "b1@example.org")
        yield self.directory.add_alias("bob", "b2@example.org")
        error = yield self.assert_refused(
            self.directory.delete("example.org"), AddressInUse, "example.org", "alice@example.org"
        )
        self.assertIn("and 1 more", str(error))
        yield self.assert_refused(
            self.directory.update("example.org", name="example.net"), AddressInUse, "example.org"
        )

    @inlineCallbacks
    def test_delete_unused_domain(self):
        """A domain without addresses can be deleted."""
        yield self.directory.create_principal("domain", "example.org")
        yield self.directory.delete("example.org")
        self.assertEqual((yield self.directory.list()), [])


class ValidationTests(DirectoryTestCase):
    """
    Every refusal names the value it refuses.
    """

    @inlineCallbacks
    def test_unknown_kind(self):
        """An unknown kind is refused by create and list."""
        yield self.assert_refused(
            self.directory.create_principal("robot", "r2"), InvalidPrincipal, "robot"
        )
        yield self.assertFailure(self.directory.list("robot"), InvalidPrincipal)

    @inlineCallbacks
    def test_bad_names(self):
        """Empty, over-long, whitespace, control-character and non-text names are refused."""
        for name, fragment in [
            ("", "empty"),
            ("a" * 256, "longer than 255"),
            ("al ice", "al ice"),
            ("tab\there", "whitespace"),
            ("bell\x07", "control"),
            (None, "None"),
        ]:
            yield self.assert_refused(
                self.directory.create_principal("individual", name), InvalidPrincipal, fragment
            )
        yield self.assertFailure(self.directory.get(None), InvalidPrincipal)

    @inlineCallbacks
    def test_bad_domain_names(self):
        """A domain name must be a DNS name."""
        too_long_label = "x" * 64 + ".org"
        for name in ["-bad.org", "bad-.org", "under_score.org", "1.2.3.4", "a..b", too_long_label]:
            yield self.assert_refused(
                self.directory.create_principal("domain", name),
                InvalidPrincipal, "not a domain name"
            )
        yield self.directory.create_principal("domain", "example.org")
        yield self.assert_refused(
            self.directory.update("example.org", name="bad_name"), InvalidPrincipal, "bad_name"
        )

    @inlineCallbacks
    def test_bad_addresses(self):
        """Addresses must be local@domain without whitespace, within length limits."""
        yield self.populate()
        for address in [
            "no-at-sign", "@example.org", "alice@", "a b@example.org", "a@b@example.org",
            "x" * 65 + "@example.org", 42,
        ]:
            yield self.assert_refused(
                self.directory.add_alias("alice", address), InvalidPrincipal, "address"
            )
        yield self.assertFailure(self.directory.lookup_address(None), InvalidPrincipal)

    @inlineCallbacks
    def test_principal_exists(self):
        """A name taken in any case is refused, for a new principal and for a rename."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.create_principal("group", "ALICE"), PrincipalExists, "alice"
        )
        yield self.assert_refused(
            self.directory.update("bob", name="alice"), PrincipalExists, "alice"
        )

    @inlineCallbacks
    def test_bad_values(self):
        """Bad quotas, time zones, descriptions and secrets are refused."""
        for changes, fragment in [
            ({"quota": -1}, "-1"),
            ({"quota": True}, "True"),
            ({"quota": "10"}, "'10'"),
            ({"timezone": "Mars/Olympus"}, "Mars/Olympus"),
            ({"description": 5}, "5"),
            ({"secret": ""}, "secret"),
        ]:
            yield self.assert_refused(
                self.directory.create_principal("individual", "carol", **changes),
                InvalidPrincipal, fragment,
            )

    @inlineCallbacks
    def test_bad_updates(self):
        """An update of an unknown field, or with no change, is refused."""
        yield self.populate()
        yield self.assert_refused(
            self.directory.update("alice", colour="blue"), InvalidPrincipal, "colour"
        )
        yield self.assert_refused(self.directory.update("alice"), InvalidPrincipal, "at least one")
        yield self.assert_refused(
            self.directory.update("alice", quota=-5), InvalidPrincipal, "-5"
        )


class GroupsOfTests(DirectoryTestCase):
    """
    The groups a principal belongs to, for the accounts it may use.
    """

    @inlineCallbacks
    def test_groups_of(self):
        """Only groups (not lists) that hold the principal directly are listed."""
        yield self.directory.create_principal("domain", "example.org")
        jane = yield self.directory.create_principal("individual", "jane", secret="password")
        sales = yield self.directory.create_principal("group", "sales", members=["jane"])
        yield self.directory.create_principal("group", "other")
        yield self.directory.create_principal(
            "list", "news", email="news@example.org", members=["jane"]
        )
        self.assertEqual((yield self.directory.groups_of(jane.id)), [sales.id])
        self.assertEqual((yield self.directory.groups_of(sales.id)), [])


class ReplaceTests(DirectoryTestCase):
    """
    Several changes to one principal commit as one batch.
    """

    @inlineCallbacks
    def test_alias_promoted_to_primary(self):
        """An alias becomes the primary and the old primary an alias, in one write."""
        yield self.directory.create_principal("domain", "example.org")
        yield self.directory.create_principal(
            "individual", "jane", secret="password", email="jane@example.org",
            aliases=["j@example.org"],
        )
        before = yield self.modseq()
        jane = yield self.directory.replace(
            "jane", addresses=("j@example.org", ["jane@example.org"])
        )
        self.assertEqual((jane.email, jane.aliases), ("j@example.org", ("jane@example.org",)))
        self.assertEqual((yield self.modseq()), before + 1)

    @inlineCallbacks
    def test_all_or_nothing(self):
        """When one part is refused, none of the others is applied."""
        yield self.directory.create_principal("domain", "example.org")
        yield self.directory.create_principal("individual", "bob", email="bob@example.org")
        yield self.directory.create_principal("group", "sales")
        failure = self.directory.replace(
            "sales", changes={"description": "Sales"}, members=["bob", "nobody"]
        )
        yield self.assertFailure(failure, PrincipalNotFound)
        failure = self.directory.replace(
            "sales", changes={"description": "Sales"}, addresses=("bob@example.org", [])
        )
        yield self.assertFailure(failure, AddressInUse)
        sales = yield self.directory.get("sales")
        self.assertEqual((sales.description, sales.members, sales.email), (None, (), None))

    @inlineCallbacks
    def test_rename_with_members(self):
        """Members and a new name are set together."""
        yield self.directory.create_principal("individual", "bob")
        yield self.directory.create_principal("group", "sales")
        group = yield self.directory.replace("sales", changes={"name": "team"}, members=["bob"])
        self.assertEqual((group.name, group.members), ("team", ("bob",)))
