"""
Tests for stalwart_tw.admin.manhole: the telnet admin shell, driven through
a StringTransport as a telnet client would drive it.

A telnet client answers the server's option negotiation; the login needs two
answers: DO ECHO when the server offers to echo (so the password is not
shown) and DONT ECHO when it stops. The tests send those bytes themselves.
Logins and helpers finish on threads, so the tests wait on the Deferreds
the checker and the interpreter record, never on time.
"""

from twisted.conch.telnet import DO, DONT, ECHO, IAC
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, inlineCallbacks
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from stalwart_tw.admin.manhole import BANNER, Text, manhole_factory, render
from stalwart_tw.setting_kinds import Rate
from stalwart_tw.store.directory import Directory, Principal
from stalwart_tw.writer import AccountWriter
from tests.support import cheap_hasher, open_store_and_node

PEER = IPv4Address("TCP", "127.0.0.1", 40123)
ADMIN_PASSWORD = "admin-secret"


class ShellClient:
    """
    One telnet connection to the admin shell, fed through a StringTransport.
    """

    def __init__(self, factory, peer=PEER):
        self.transport = StringTransport()
        self.protocol = factory.buildProtocol(peer)
        self.protocol.makeConnection(self.transport)
        # Before login, the telnet transport runs AuthenticatingTelnetProtocol.
        self.checker = self.protocol.protocol.portal.checkers[IUsernamePassword]

    def output(self):
        return self.transport.value().decode("utf-8", "replace")

    def login(self, username, password):
        """
        Answer the prompts; the Deferred fires once the login was handled.
        """
        self.protocol.dataReceived(username.encode("utf-8") + b"\r\n")
        self.protocol.dataReceived(IAC + DO + ECHO)
        self.protocol.dataReceived(password.encode("utf-8") + b"\r\n")
        self.protocol.dataReceived(IAC + DONT + ECHO)
        return self.checker.last_attempt

    @property
    def interpreter(self):
        # telnet transport -> TelnetBootstrapProtocol -> ServerProtocol -> AdminShell
        return self.protocol.protocol.protocol.terminalProtocol.interpreter

    @inlineCallbacks
    def run(self, line):
        """
        Type one line into a clean screen and wait for its Deferred result,
        if it made one.

        @return: a Deferred firing with the output of that line.
        """
        self.transport.clear()
        before = self.interpreter.last_shown
        self.protocol.dataReceived(line.encode("utf-8") + b"\r\n")
        if self.interpreter.last_shown is not before:
            yield self.interpreter.last_shown
        return self.output()


class ManholeTestCase(unittest.TestCase):
    """
    An admin shell factory over a real directory with cheap Argon2.
    """

    @inlineCallbacks
    def setUp(self):
        self.store, self.node = yield open_store_and_node(self)
        self.directory = Directory(
            self.store, AccountWriter(self.store, self.node), clock=task.Clock(),
            password_hasher=cheap_hasher(),
        )
        yield self.directory.ensure_admin(ADMIN_PASSWORD)
        self.status = {"data_path": "/srv/stalwart", "database_bytes": 4096,
                       "blob_bytes": 0, "uptime_seconds": 12, "applied_index": 3}
        self.factory = manhole_factory(self.directory, lambda: self.status)


    @inlineCallbacks
    def logged_in(self):
        client = ShellClient(self.factory)
        yield client.login("admin", ADMIN_PASSWORD)
        return client


class LoginTests(ManholeTestCase):
    """
    The telnet login in front of the shell.
    """

    @inlineCallbacks
    def test_admin_gets_the_shell(self):
        """The admin password opens the shell, whose helpers act on the directory."""
        client = yield self.logged_in()
        self.assertIn("Username: ", client.output())
        self.assertIn("Password: ", client.output())
        self.assertIn(BANNER, client.output())
        self.assertIn(">>> ", client.output())
        yield client.run("create_domain('example.org')")
        output = yield client.run("list_domains()")
        self.assertIn("example.org", output)
        self.assertIsNotNone((yield self.directory.get("example.org")))

    @inlineCallbacks
    def test_wrong_password(self):
        """A wrong password gets the retry prompt, nothing of the shell, and one log line."""
        client = ShellClient(self.factory)
        with capturedLogs() as events:
            yield client.login("admin", "guess")
        output = client.output()
        self.assertIn("Authentication failed", output)
        self.assertTrue(output.rstrip().endswith("Username:"))
        self.assertNotIn(">>>", output)
        self.assertNotIn(BANNER, output)
        lines = [formatEvent(event) for event in events if "admin shell" in formatEvent(event)]
        self.assertEqual(lines, ["admin shell: failed login for 'admin' from 127.0.0.1:40123"])

    @inlineCallbacks
    def test_failed_logins_throttled(self):
        """After rate-limit-auth failures, even the right password is refused unchecked, one log line."""
        clock = task.Clock()
        factory = manhole_factory(
            self.directory, lambda: self.status, auth_rate=Rate(3, 60), clock=clock
        )
        peer = IPv4Address("TCP", "10.0.0.9", 2301)
        with capturedLogs() as events:
            for _ in range(3):
                yield ShellClient(factory, peer).login("admin", "a-wrong-guess")
        lines = [formatEvent(event) for event in events if "admin shell" in formatEvent(event)]
        self.assertEqual(len(lines), 1)
        calls = []
        real = self.directory.authenticate
        self.patch(self.directory, "authenticate", lambda *a: calls.append(a) or real(*a))
        client = ShellClient(factory, peer)
        yield client.login("admin", ADMIN_PASSWORD)
        self.assertIn("Authentication failed", client.output())
        self.assertEqual(calls, [])
        # The login name is throttled too, from any address.
        client = ShellClient(factory, IPv4Address("TCP", "10.0.0.10", 2302))
        yield client.login("admin", ADMIN_PASSWORD)
        self.assertNotIn(BANNER, client.output())
        self.assertEqual(calls, [])
        clock.advance(60)
        client = ShellClient(factory, peer)
        yield client.login("admin", ADMIN_PASSWORD)
        self.assertIn(BANNER, client.output())

    @inlineCallbacks
    def test_only_admin(self):
        """Another user name is refused even with the admin's password, and logged."""
        yield self.directory.create_principal("individual", "alice", secret=ADMIN_PASSWORD)
        client = ShellClient(self.factory, IPv4Address("TCP", "10.0.0.7", 2300))
        with capturedLogs() as events:
            yield client.login("alice", ADMIN_PASSWORD)
        self.assertIn("Authentication failed", client.output())
        self.assertNotIn(">>>", client.output())
        lines = [formatEvent(event) for event in events if "failed login" in formatEvent(event)]
        self.assertEqual(lines, ["admin shell: failed login for 'alice' from 10.0.0.7:2300"])

    @inlineCallbacks
    def test_retry_after_failure(self):
        """After a failed login, the right password still opens the shell."""
        client = ShellClient(self.factory)
        yield client.login("admin", "guess")
        yield client.login("admin", ADMIN_PASSWORD)
        self.assertIn(">>> ", client.output())
        self.assertIn("data_path: /srv/stalwart", (yield client.run("status()")))

    @inlineCallbacks
    def test_directory_failure_refuses_login(self):
        """A directory that cannot answer refuses the login and logs why."""
        self.patch(self.directory, "authenticate", lambda *a: fail(RuntimeError("store closed")))
        client = ShellClient(self.factory)
        yield client.login("admin", ADMIN_PASSWORD)
        self.assertIn("Authentication failed", client.output())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HelperTests(ManholeTestCase):
    """
    The helpers of the shell's namespace.
    """

    @inlineCallbacks
    def test_help_lists_every_helper(self):
        """help() names every helper with a one-line description."""
        client = yield self.logged_in()
        output = yield client.run("help()")
        for name in [
            "create_account", "create_domain", "create_group", "create_list", "list_accounts",
            "list_domains", "list_groups", "list_lists", "show", "update", "delete",
            "add_alias", "remove_alias", "add_member", "remove_member", "status",
        ]:
            self.assertIn(f"  {name}(", output)
        self.assertIn("create_account(name, password, email=None", output)

    @inlineCallbacks
    def test_show_renders_fields(self):
        """show() prints a principal as name: value lines."""
        client = yield self.logged_in()
        yield client.run("create_domain('example.org')")
        yield client.run(
            "create_account('alice', 'alice-password', email='alice@example.org', quota=1048576)"
        )
        output = yield client.run("show('alice')")
        for line in [
            "name: alice", "kind: individual", "email: alice@example.org",
            "quota: 1048576 bytes (1.0 MiB)", "timezone: -",
        ]:
            self.assertIn(line, output)
        self.assertNotIn("argon2", output)

    @inlineCallbacks
    def test_account_can_log_in(self):
        """An account created in the shell authenticates with its password."""
        client = yield self.logged_in()
        yield client.run("create_account('bob', 'bob-password')")
        self.assertEqual((yield self.directory.authenticate("bob", "bob-password")).name, "bob")
        yield client.run("update('bob', password='new-password')")
        self.assertIsNotNone((yield self.directory.authenticate("bob", "new-password")))

    @inlineCallbacks
    def test_short_password_refused(self):
        """The shell refuses a password shorter than the minimum, saying so; nothing is created."""
        client = yield self.logged_in()
        output = yield client.run("create_account('carl', 'short')")
        self.assertIn("at least 8 characters", output)
        self.assertIsNone((yield self.directory.get("carl")))
        yield client.run("create_account('dana', 'dana-password')")
        output = yield client.run("update('dana', password='        x       ')")
        self.assertIn("at least 8 characters", output)
        self.assertIsNotNone((yield self.directory.authenticate("dana", "dana-password")))

    @inlineCallbacks
    def test_error_text_shown(self):
        """A helper's DirectoryError is printed as its text, and the shell goes on."""
        client = yield self.logged_in()
        yield client.run("create_domain('example.org')")
        output = yield client.run("create_domain('example.org')")
        self.assertIn("failed:", output)
        self.assertIn("a principal named 'example.org' already exists", output)
        self.assertNotIn("Traceback", output)
        output = yield client.run("show('ghost')")
        self.assertIn("no principal named 'ghost'", output)
        output = yield client.run("list_domains()")
        self.assertIn("example.org", output)

    @inlineCallbacks
    def test_immediate_error_text_shown(self):
        """A request refused before any I/O prints its error inline."""
        client = yield self.logged_in()
        output = yield client.run("create_domain('bad domain')")
        self.assertIn("error: name 'bad domain' contains whitespace", output)

    @inlineCallbacks
    def test_groups_lists_and_aliases(self):
        """Groups, lists, members and aliases are managed and listed from the shell."""
        client = yield self.logged_in()
        for line in [
            "create_domain('example.org')",
            "create_account('alice', 'alice-password', email='alice@example.org')",
            "create_account('bob', 'bob-password')",
            "create_group('staff', members=['alice'])",
            "create_list('news', 'news@example.org', members=['staff'])",
            "add_member('staff', 'bob')",
            "add_alias('bob', 'b@example.org')",
        ]:
            yield client.run(line)
        self.assertIn("staff [alice, bob]", (yield client.run("list_groups()")))
        self.assertIn("news <news@example.org> [staff]", (yield client.run("list_lists()")))
        output = yield client.run("remove_member('staff', 'alice')")
        self.assertIn("Deferred #", output)
        self.assertIn("members: bob\n", output.replace("\r", ""))
        yield client.run("remove_alias('bob', 'b@example.org')")
        self.assertIsNone((yield self.directory.lookup_address("b@example.org")))
        output = yield client.run("list_accounts()")
        self.assertIn("alice <alice@example.org>", output)
        self.assertIn("bob", output)

    @inlineCallbacks
    def test_delete(self):
        """delete() removes the principal and says so."""
        client = yield self.logged_in()
        yield client.run("create_account('bob', 'bob-password')")
        self.assertIn("deleted bob", (yield client.run("delete('bob')")))
        self.assertIsNone((yield self.directory.get("bob")))
        self.assertIn("(none)", (yield client.run("list_groups()")))

    @inlineCallbacks
    def test_status(self):
        """status() prints the status callable's dict as key: value lines."""
        client = yield self.logged_in()
        output = yield client.run("status()")
        self.assertIn("data_path: /srv/stalwart", output)
        self.assertIn("applied_index: 3", output)

    @inlineCallbacks
    def test_cluster_table(self):
        """cluster() shows this node and a row per peer; alone, says so."""
        described = {
            "node": {"id": "aa" * 8, "rpc": "10.0.0.1:7911", "jmapUrl": "http://a",
                     "role": "voter"},
            "peers": [{"id": "bb" * 8, "rpc": "10.0.0.2:7911", "state": "suspected",
                       "phi": 6.25, "epoch": 42, "lastSeen": None, "rpcConnection": "idle"}],
        }
        client = yield self.logged_in()
        self.assertIn("this node runs alone", (yield client.run("cluster()")))
        self.factory = manhole_factory(self.directory, lambda: {}, lambda: described)
        client = yield self.logged_in()
        output = (yield client.run("cluster()")).replace("\r", "")
        self.assertIn("this node: " + "aa" * 8 + " at 10.0.0.1:7911 (voter)", output)
        row = next(line for line in output.splitlines() if line.startswith("bb" * 8))
        self.assertEqual(row.split(), ["bb" * 8, "10.0.0.2:7911", "suspected", "6.25", "42",
                                       "never", "idle"])

    @inlineCallbacks
    def test_unexpected_failure_logged(self):
        """A failure that is not a DirectoryError is shown and logged, not raised."""
        def broken():
            raise RuntimeError("disk unplugged")

        self.factory = manhole_factory(self.directory, broken)
        client = yield self.logged_in()
        output = yield client.run("status()")
        self.assertIn("disk unplugged", output)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertIn("\n2\n", (yield client.run("1 + 1")).replace("\r", ""))


class RenderTests(unittest.TestCase):
    """
    How results are shown.
    """

    def test_principal(self):
        """A principal renders as name: value lines, members for groups only."""
        group = Principal(id=3, kind="group", name="staff", members=("alice",), created_at=60)
        text = render(group)
        self.assertEqual(text.splitlines()[0], "name: staff")
        self.assertIn("members: alice", text)
        self.assertIn("created: 1970-01-01 00:01:00 UTC", text)
        self.assertNotIn("members", render(Principal(id=1, kind="individual", name="a")))

    def test_other_values(self):
        """Empty lists, dicts, None and Text render readably."""
        self.assertEqual(render([]), "(none)")
        self.assertEqual(render({"a": 1, "b": "x"}), "a: 1\nb: x")
        self.assertEqual(render(None), "done")
        self.assertEqual(repr(Text("plain")), "plain")
