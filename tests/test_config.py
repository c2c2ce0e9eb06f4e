"""
Tests for L{stalwart_tw.config}: sources, precedence, parsing and errors.
"""

import os
import re

from twisted.trial.unittest import TestCase

from stalwart_tw import config
from stalwart_tw.config import (
    SETTINGS,
    SETTINGS_BY_NAME,
    ConfigError,
    Rate,
    Schedule,
    Settings,
    load_settings,
)

SHIPPED_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "etc",
    "config.yml",
)


def load(**sources):
    """Load with an empty environment unless the test gives one."""
    sources.setdefault("environ", {})
    return load_settings(**sources)


class _ConfigTestMixin:
    """Helpers shared by the test classes below."""

    def write_file(self, text):
        """Write C{text} to a fresh temporary file and return its path."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(text)
        return path

    def error_of(self, **sources):
        """The message of the ConfigError that loading C{sources} raises."""
        error = self.assertRaises(ConfigError, load, **sources)
        message = str(error)
        self.assertNotIn("\n", message)
        return message

    def bad_value(self, name, raw, expected):
        """Giving C{raw} to C{name} on the command line fails as it should."""
        message = self.error_of(command_line={name: raw})
        self.assertEqual(
            message,
            f"setting {name!r} = {raw!r} (from command line --{name}): "
            f"expected {expected}",
        )


class RegistryTests(TestCase):
    """
    The registry of settings.
    """

    def test_names_unique(self):
        """No two settings share a name."""
        names = [setting.name for setting in SETTINGS]
        self.assertEqual(len(names), len(set(names)))
        self.assertEqual(list(SETTINGS_BY_NAME), names)

    def test_names_shape(self):
        """Names are lower-case words joined by dashes, so env names work."""
        for setting in SETTINGS:
            self.assertRegex(setting.name, r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
            self.assertEqual(
                setting.env_name, setting.name.upper().replace("-", "_")
            )

    def test_help_one_line(self):
        """Every setting has a one-line help text."""
        for setting in SETTINGS:
            self.assertTrue(setting.help, setting.name)
            self.assertNotIn("\n", setting.help)

    def test_known_settings_present(self):
        """Settings of every family, including the paired ones, exist."""
        for name in [
            "jmap-cert-path", "jmap-key-path", "lmtp-cert-path",
            "lmtp-key-path", "rpc-cert-path", "rpc-key-path",
            "smtp-relay-host", "smtp-relay-port", "cache-size-ids",
            "cache-tti-recipients", "sieve-vacation-subject-prefix",
            "push-throttle", "raft-election-timeout",
            "schedule-compact-db", "oauth-max-attempts", "manhole-port",
        ]:
            self.assertIn(name, SETTINGS_BY_NAME)

    def test_defaults_round_trip(self):
        """Each static default, written back as text, parses to itself."""
        for setting in SETTINGS:
            if setting.default is not None:
                text = setting.format(setting.default)
                self.assertEqual(setting.parse(text), setting.default)


class DefaultsTests(TestCase):
    """
    Loading with no source at all.
    """

    def test_defaults(self):
        """With no source, every static setting has its default."""
        settings = load()
        for setting in SETTINGS:
            if setting.derive is None:
                self.assertEqual(settings[setting.name], setting.default)
            self.assertEqual(settings.source(setting.name), "default")

    def test_sample_values(self):
        """Defaults come out as the documented Python values."""
        settings = load()
        self.assertEqual(settings.jmap_port, 8080)
        self.assertEqual(settings.db_path, "./stalwart-data")
        self.assertEqual(settings.jmap_url, "http://127.0.0.1:8080")
        self.assertIs(settings.strict_cors, False)
        self.assertEqual(settings.rate_limit_auth, Rate(10, 60))
        self.assertEqual(settings.schedule_purge_blobs, Schedule(30, 3, None))
        self.assertEqual(
            settings.sieve_protected_headers,
            ("Original-Subject", "Original-From", "Received",
             "Auto-Submitted"),
        )
        self.assertEqual(settings.sieve_notification_uris, ("mailto",))
        self.assertEqual(settings.sieve_vacation_subject_prefix, "Auto: ")
        self.assertEqual(settings.seed_nodes, ())
        self.assertEqual(settings.cluster_role, "voter")
        self.assertIsNone(settings.admin_secret)
        self.assertIsNone(settings.encryption_key)
        self.assertIsNone(settings.rpc_advertise_addr)

    def test_environ_defaults_to_os_environ(self):
        """Without an environ argument, os.environ is read."""
        self.patch(os, "environ", {"MANHOLE_PORT": "0"})
        self.assertEqual(load_settings().manhole_port, 0)


class DerivedDefaultsTests(TestCase):
    """
    Defaults computed from other settings.
    """

    def test_rpc_bind_addr_follows_jmap_bind_addr(self):
        """rpc-bind-addr defaults to whatever jmap-bind-addr is."""
        settings = load(command_line={"jmap-bind-addr": "0.0.0.0"})
        self.assertEqual(settings.rpc_bind_addr, "0.0.0.0")
        self.assertEqual(load().rpc_bind_addr, "127.0.0.1")

    def test_rpc_bind_addr_explicit(self):
        """An explicit rpc-bind-addr wins over the derived one."""
        settings = load(command_line={
            "jmap-bind-addr": "0.0.0.0", "rpc-bind-addr": "10.0.0.1",
        })
        self.assertEqual(settings.rpc_bind_addr, "10.0.0.1")

    def test_worker_pool_size_is_cpu_count(self):
        """worker-pool-size defaults to the number of CPUs."""
        self.assertEqual(
            load().worker_pool_size, max(1, os.cpu_count() or 1)
        )
        self.patch(config.os, "cpu_count", lambda: 12)
        self.assertEqual(load().worker_pool_size, 12)

    def test_worker_pool_size_unknown_cpu_count(self):
        """When the CPU count is unknown, one worker is used."""
        self.patch(config.os, "cpu_count", lambda: None)
        self.assertEqual(load().worker_pool_size, 1)

    def test_empty_value_means_derived(self):
        """An empty WORKER_POOL_SIZE leaves the derived default."""
        self.patch(config.os, "cpu_count", lambda: 3)
        settings = load(environ={"WORKER_POOL_SIZE": ""})
        self.assertEqual(settings.worker_pool_size, 3)

    def test_rpc_pair_follows_jmap_pair(self):
        """rpc-cert-path and rpc-key-path borrow the JMAP pair."""
        settings = load(command_line={
            "jmap-cert-path": "/c.pem", "jmap-key-path": "/k.pem",
        })
        self.assertEqual(settings.rpc_cert_path, "/c.pem")
        self.assertEqual(settings.rpc_key_path, "/k.pem")

    def test_rpc_pair_none_without_jmap_pair(self):
        """Without a JMAP pair, the RPC pair is left for the cluster code."""
        settings = load()
        self.assertIsNone(settings.rpc_cert_path)
        self.assertIsNone(settings.rpc_key_path)

    def test_rpc_pair_explicit(self):
        """An explicit RPC pair wins over the JMAP pair."""
        settings = load(command_line={
            "jmap-cert-path": "/c.pem", "jmap-key-path": "/k.pem",
            "rpc-cert-path": "/rc.pem", "rpc-key-path": "/rk.pem",
        })
        self.assertEqual(settings.rpc_cert_path, "/rc.pem")
        self.assertEqual(settings.rpc_key_path, "/rk.pem")

    def test_replace_derives_again(self):
        """replace() re-derives defaults from the new values."""
        settings = load().replace(jmap_bind_addr="::")
        self.assertEqual(settings.rpc_bind_addr, "::")


class PrecedenceTests(_ConfigTestMixin, TestCase):
    """
    environment > command line > file > default.
    """

    def test_layers(self):
        """Each source overrides the ones below it, and source() says which."""
        path = self.write_file("jmap-port: 1001\n")
        cases = [
            ({}, 8080, "default"),
            ({"file_path": path}, 1001, "file"),
            ({"file_path": path, "command_line": {"jmap-port": "1002"}},
             1002, "command line"),
            ({"file_path": path, "command_line": {"jmap-port": "1002"},
              "environ": {"JMAP_PORT": "1003"}}, 1003, "environment"),
            ({"command_line": {"jmap-port": "1002"},
              "environ": {"JMAP_PORT": "1003"}}, 1003, "environment"),
            ({"file_path": path, "environ": {"JMAP_PORT": "1003"}},
             1003, "environment"),
        ]
        for sources, port, source in cases:
            settings = load(**sources)
            self.assertEqual(settings.jmap_port, port)
            self.assertEqual(settings.source("jmap-port"), source)

    def test_sources_per_setting(self):
        """Each setting keeps its own source when sources are mixed."""
        path = self.write_file("lmtp-port: 2525\nlog-level: debug\n")
        settings = load(
            file_path=path,
            command_line={"log-level": "warn"},
            environ={"RPC_PORT": "7000"},
        )
        self.assertEqual(settings.source("lmtp-port"), "file")
        self.assertEqual(settings.source("log-level"), "command line")
        self.assertEqual(settings.source("rpc-port"), "environment")
        self.assertEqual(settings.source("jmap-port"), "default")
        self.assertEqual(settings.source("rpc_port"), "environment")

    def test_unrelated_environment_ignored(self):
        """Environment variables that name no setting are ignored."""
        settings = load(environ={
            "PATH": "/usr/bin", "HOME": "/root", "JMAP_PROT": "x",
            "jmap_port": "x", "STALWART_JMAP_PORT": "x",
        })
        self.assertEqual(settings, load())

    def test_command_line_none_ignored(self):
        """Options twistd reports as None count as not given."""
        settings = load(command_line={"jmap-port": None, "db-path": "/d"})
        self.assertEqual(settings.jmap_port, 8080)
        self.assertEqual(settings.source("jmap-port"), "default")
        self.assertEqual(settings.db_path, "/d")

    def test_overridden_bad_value_still_rejected(self):
        """A bad value in the file fails even when the environment wins."""
        path = self.write_file("jmap-port: abc\n")
        message = self.error_of(file_path=path, environ={"JMAP_PORT": "1"})
        self.assertIn("'jmap-port' = 'abc' (from file ", message)

    def test_empty_file(self):
        """A file with only comments yields the defaults."""
        path = self.write_file("# nothing here\n")
        self.assertEqual(load(file_path=path), load())


class ValueTests(_ConfigTestMixin, TestCase):
    """
    Values accepted by each kind of setting.
    """

    def test_integer_strings(self):
        """Integers are read from strings, surrounding spaces allowed."""
        settings = load(environ={"JMAP_PORT": " 8443 ", "MANHOLE_PORT": "0"})
        self.assertEqual(settings.jmap_port, 8443)
        self.assertEqual(settings.manhole_port, 0)

    def test_yaml_native_types(self):
        """YAML integers, booleans and lists are taken as they are."""
        path = self.write_file(
            "jmap-port: 9000\nstrict-cors: true\nlmtp-tls-only: no\n"
            "lmtp-cert-path: /c\nlmtp-key-path: /k\n"
            "sieve-notification-uris: [mailto, xmpp]\n"
            "seed-nodes: [a.example, 'b.example:7000']\n"
            "rpc-advertise-addr: c.example\nencryption-key: a-shared-cluster-key\n"
        )
        settings = load(file_path=path)
        self.assertEqual(settings.jmap_port, 9000)
        self.assertIs(settings.strict_cors, True)
        self.assertIs(settings.lmtp_tls_only, False)
        self.assertEqual(settings.sieve_notification_uris, ("mailto", "xmpp"))
        self.assertEqual(settings.seed_nodes, ("a.example", "b.example:7000"))

    def test_booleans(self):
        """Every documented spelling of a boolean is accepted, any case."""
        for raw, value in [
            ("true", True), ("TRUE", True), ("yes", True), ("On", True),
            ("1", True), ("false", False), ("No", False), ("off", False),
            ("0", False), ("FALSE", False),
        ]:
            settings = load(command_line={"strict-cors": raw})
            self.assertIs(settings.strict_cors, value, raw)

    def test_choice_case(self):
        """A choice is matched without regard to case."""
        settings = load(
            environ={"LOG_LEVEL": "DEBUG", "CLUSTER_ROLE": "replica"}
        )
        self.assertEqual(settings.log_level, "debug")
        self.assertEqual(settings.cluster_role, "replica")

    def test_rate(self):
        """A rate 'N/S' becomes Rate(count, seconds)."""
        settings = load(command_line={"rate-limit-auth": "5 / 30"})
        self.assertEqual(settings.rate_limit_auth, Rate(count=5, seconds=30))

    def test_schedule(self):
        """A schedule becomes Schedule(minute, hour, weekday or None)."""
        settings = load(command_line={
            "schedule-compact-db": "15 2 7", "schedule-purge-blobs": "59 23 *",
        })
        self.assertEqual(settings.schedule_compact_db, Schedule(15, 2, 7))
        self.assertEqual(settings.schedule_purge_blobs, Schedule(59, 23, None))

    def test_semicolon_lists(self):
        """';'-separated lists are split and stripped, empties dropped."""
        settings = load(command_line={
            "lmtp-trusted-ips": " 10.0.0.1 ;; 192.168.0.0/16; ::1;",
            "seed-nodes": "a.example;b.example:7000;[::1]:7911;10.0.0.2;",
            "rpc-advertise-addr": "10.0.0.3", "encryption-key": "a-shared-cluster-key",
        })
        self.assertEqual(
            settings.lmtp_trusted_ips, ("10.0.0.1", "192.168.0.0/16", "::1")
        )
        self.assertEqual(
            settings.seed_nodes,
            ("a.example", "b.example:7000", "[::1]:7911", "10.0.0.2"),
        )

    def test_space_lists(self):
        """Space-separated lists split on any run of whitespace."""
        settings = load(command_line={
            "sieve-disable-capabilities": " vacation  enotify ",
            "sieve-protected-headers": "X-A\tX-B",
        })
        self.assertEqual(
            settings.sieve_disable_capabilities, ("vacation", "enotify")
        )
        self.assertEqual(settings.sieve_protected_headers, ("X-A", "X-B"))

    def test_url_trailing_slash(self):
        """The JMAP URL is stored without its trailing slash."""
        settings = load(command_line={"jmap-url": "https://mail.example.com/"})
        self.assertEqual(settings.jmap_url, "https://mail.example.com")
        settings = load(command_line={"jmap-url": "http://[::1]:8080/base/"})
        self.assertEqual(settings.jmap_url, "http://[::1]:8080/base")

    def test_ip_addresses(self):
        """IPv4 and IPv6 literals are accepted for bind addresses."""
        settings = load(command_line={
            "jmap-bind-addr": "::", "lmtp-bind-addr": "0.0.0.0",
            "manhole-bind-addr": "::1",
        })
        self.assertEqual(settings.jmap_bind_addr, "::")
        self.assertEqual(settings.lmtp_bind_addr, "0.0.0.0")
        self.assertEqual(settings.manhole_bind_addr, "::1")

    def test_advertise_hostname(self):
        """rpc-advertise-addr takes a host name as well as an address."""
        for raw in ["node1.example.com", "node1", "10.1.2.3", "fe80::1"]:
            settings = load(command_line={
                "rpc-advertise-addr": raw, "encryption-key": "a-shared-cluster-key"})
            self.assertEqual(settings.rpc_advertise_addr, raw)

    def test_empty_optional(self):
        """An empty value for an optional setting leaves it unset."""
        settings = load(
            command_line={"admin-secret": "a-long-enough-s3cret"},
            environ={"ADMIN_SECRET": ""},
        )
        self.assertIsNone(settings.admin_secret)
        self.assertEqual(settings.source("admin-secret"), "environment")

    def test_free_text_kept(self):
        """Free text settings keep their spaces."""
        settings = load(environ={"SIEVE_VACATION_SUBJECT_PREFIX": "Re:  "})
        self.assertEqual(settings.sieve_vacation_subject_prefix, "Re:  ")

    def test_tls_pairs(self):
        """A complete certificate and key pair is accepted."""
        settings = load(command_line={
            "lmtp-cert-path": "/c", "lmtp-key-path": "/k",
            "lmtp-tls-only": "true",
        })
        self.assertEqual(
            (settings.lmtp_cert_path, settings.lmtp_key_path), ("/c", "/k")
        )
        self.assertIs(settings.lmtp_tls_only, True)

    def test_cluster(self):
        """seed-nodes with rpc-advertise-addr is accepted."""
        settings = load(environ={
            "SEED_NODES": "a.example", "RPC_ADVERTISE_ADDR": "b.example",
            "ENCRYPTION_KEY": "a-shared-cluster-key",
        })
        self.assertEqual(settings.seed_nodes, ("a.example",))


class BadValueTests(_ConfigTestMixin, TestCase):
    """
    Every kind of bad value stops loading with one precise line.
    """

    def test_example_message(self):
        """The message names setting, value, source and expectation."""
        message = self.error_of(environ={"JMAP_PORT": "abc"})
        self.assertEqual(
            message,
            "setting 'jmap-port' = 'abc' (from environment JMAP_PORT): "
            "expected an integer from 0 to 65535",
        )

    def test_file_source_in_message(self):
        """A bad value from the file names the file, and keeps its type."""
        path = self.write_file("jmap-port: 8080.5\n")
        self.assertEqual(
            self.error_of(file_path=path),
            f"setting 'jmap-port' = 8080.5 (from file {path}): "
            "expected an integer from 0 to 65535",
        )

    def test_non_integer(self):
        """Text, decimals and empty strings are not integers."""
        for raw in ["abc", "1.5", "", "0x10", "1e3", "١٢"]:
            self.bad_value("max-calls-in-request", raw, "an integer >= 1")

    def test_integer_out_of_range(self):
        """Integers outside their range are rejected."""
        expected = "an integer from 0 to 65535"
        self.bad_value("jmap-port", "65536", expected)
        self.bad_value("jmap-port", "-1", expected)
        self.bad_value("smtp-relay-port", "0", "an integer from 1 to 65535")
        self.bad_value("worker-pool-size", "0", "an integer >= 1")
        self.bad_value("blob-nested-levels", "-1", "an integer >= 0")

    def test_huge_integer(self):
        """A number too long for int() is a ConfigError, not a crash."""
        message = self.error_of(environ={"JMAP_PORT": "9" * 5000})
        self.assertIn("setting 'jmap-port' = '999", message)
        self.assertLess(len(message), 300)

    def test_yaml_bool_for_integer(self):
        """A YAML boolean is not taken as the integer 1."""
        path = self.write_file("max-calls-in-request: yes\n")
        self.assertIn("= True (from file", self.error_of(file_path=path))

    def test_bad_boolean(self):
        """Words other than the boolean spellings are rejected."""
        expected = "a boolean (true/false, yes/no, on/off, 1/0)"
        for raw in ["maybe", "2", "", "truth"]:
            self.bad_value("strict-cors", raw, expected)

    def test_bad_choice(self):
        """A value outside the choices is rejected, listing them."""
        self.bad_value(
            "log-level", "verbose",
            "one of: error, warn, info, debug, trace",
        )
        self.bad_value("cluster-role", "leader", "one of: voter, replica")

    def test_bad_rate(self):
        """Rates need two whole numbers >= 1 around a slash."""
        expected = "a rate 'count/seconds' with both >= 1, like '10/60'"
        for raw in ["10", "0/60", "10/0", "a/b", "10/60/1", "-1/60", ""]:
            self.bad_value("rate-limit-auth", raw, expected)

    def test_bad_schedule(self):
        """Schedules need minute 0-59, hour 0-23 and weekday 1-7 or *."""
        expected = (
            "a schedule 'minute hour weekday' with minute 0-59, hour 0-23 "
            "and weekday 1-7 or *, like '30 3 *'"
        )
        for raw in ["60 3 *", "0 24 *", "0 3 8", "0 3 0", "0 3", "* 3 *",
                    "0 3 * *", "a b c", ""]:
            self.bad_value("schedule-purge-blobs", raw, expected)

    def test_bad_url(self):
        """jmap-url must be an http(s) URL with a host."""
        expected = (
            "an http or https URL with a host, like "
            "'https://mail.example.com'"
        )
        for raw in ["ftp://example.com", "http://", "example.com:8080",
                    "http://example.com:99999", "https://a b",
                    "http://x/?q=1", "http://user:pw@x", ""]:
            self.bad_value("jmap-url", raw, expected)

    def test_bad_ip(self):
        """Bind addresses must be IP literals."""
        expected = "an IPv4 or IPv6 address"
        for name in ["jmap-bind-addr", "lmtp-bind-addr", "manhole-bind-addr",
                     "rpc-bind-addr"]:
            for raw in ["256.1.1.1", "localhost", "1.2.3", "::1::"]:
                self.bad_value(name, raw, expected)
        self.bad_value("jmap-bind-addr", "", expected)

    def test_bad_host(self):
        """rpc-advertise-addr must be an address or a valid host name."""
        expected = "an IP address or a host name"
        for raw in ["-bad-", "a..b", "bad_name", "999.1.1.1", "a b"]:
            self.bad_value("rpc-advertise-addr", raw, expected)

    def test_bad_language(self):
        """default-language must be two lowercase letters."""
        expected = "a two-letter lowercase ISO 639-1 code, like 'en'"
        for raw in ["EN", "eng", "e", "", "e1"]:
            self.bad_value("default-language", raw, expected)

    def test_bad_list_entries(self):
        """Entries of checked lists must be valid."""
        self.bad_value(
            "lmtp-trusted-ips", "10.0.0.1;nope",
            "';'-separated IP addresses or networks",
        )
        expected = "';'-separated host[:port] entries, port 1-65535"
        for raw in ["a.example:99999", "a.example:", "[::1:7911",
                    "[10.0.0.1]:1", "-x-", "1::2::3"]:
            self.bad_value("seed-nodes", raw, expected)

    def test_bad_empty_path(self):
        """db-path cannot be empty."""
        self.bad_value("db-path", " ", "a non-empty path")

    def test_secret_hidden(self):
        """A rejected secret is not printed."""
        path = self.write_file("encryption-key: 123456\n")
        message = self.error_of(file_path=path)
        self.assertIn(
            "setting 'encryption-key' = <hidden> (from file", message
        )
        self.assertNotIn("123456", message)

    def test_single_line_messages(self):
        """Every bad-value message is one line naming setting and value."""
        for name, raw in [
            ("jmap-port", "a\nb"), ("strict-cors", "x\r\ny"),
            ("jmap-url", "http://a\nb"), ("log-level", "\n"),
            ("seed-nodes", "a:0"), ("schedule-compact-db", "1\n2\n3\n4"),
        ]:
            message = self.error_of(environ={
                SETTINGS_BY_NAME[name].env_name: raw,
            })
            self.assertIn(repr(name), message)
            self.assertIn(repr(raw), message)

    def test_message_keeps_spaces(self):
        """Only line breaks are folded; spaces inside a value are kept."""
        message = str(ConfigError("value 'a  b'\nnext"))
        self.assertEqual(message, "value 'a  b' next")

    def test_error_names_setting(self):
        """ConfigError.setting holds the name of the faulty setting."""
        error = self.assertRaises(
            ConfigError, load, environ={"RPC_PORT": "x"}
        )
        self.assertEqual(error.setting, "rpc-port")


class SourceErrorTests(_ConfigTestMixin, TestCase):
    """
    Problems with the file and names in it or on the command line.
    """

    def test_missing_file(self):
        """A file that does not exist is named in the message."""
        path = os.path.abspath(self.mktemp())
        self.assertEqual(
            self.error_of(file_path=path), f"config file {path!r} not found"
        )

    def test_directory(self):
        """A path that cannot be read as a file is a ConfigError."""
        path = self.mktemp()
        os.mkdir(path)
        self.assertIn("cannot be read", self.error_of(file_path=path))

    def test_yaml_syntax_error(self):
        """Invalid YAML gives the line number of the problem."""
        path = self.write_file("jmap-port: 80\nlog-level: [info\ndb-path: x\n")
        message = self.error_of(file_path=path)
        self.assertTrue(
            message.startswith(f"config file {path!r} is not valid YAML"),
            message,
        )
        self.assertRegex(message, r"at line [34], column \d+: ")

    def test_yaml_indentation_error(self):
        """A misplaced mapping reports the exact line."""
        path = self.write_file("jmap-port: 80\n  bad: value\n")
        self.assertIn("at line 2, column 6:", self.error_of(file_path=path))

    def test_not_utf8(self):
        """Bytes that are no text are a one-line ConfigError."""
        path = self.mktemp()
        with open(path, "wb") as stream:
            stream.write(b"db-path: \xff\xfe\x00\n")
        self.assertIn("is not valid YAML", self.error_of(file_path=path))

    def test_deep_nesting(self):
        """YAML nested too deeply for the parser is a one-line ConfigError."""
        path = self.write_file("db-path: " + "[" * 5000 + "\n")
        self.assertIn("is not valid YAML", self.error_of(file_path=path))

    def test_top_level_list(self):
        """A file whose top level is a list is rejected."""
        path = self.write_file("- jmap-port: 80\n")
        self.assertEqual(
            self.error_of(file_path=path),
            f"config file {path!r} must be a mapping of setting names to "
            "values, not a list",
        )

    def test_top_level_scalar(self):
        """A file holding a bare string is rejected."""
        path = self.write_file("hello\n")
        self.assertIn("not a str", self.error_of(file_path=path))

    def test_unknown_in_file(self):
        """An unknown name in the file is named, with the closest guess."""
        path = self.write_file("jmap-prot: 80\n")
        self.assertEqual(
            self.error_of(file_path=path),
            f"unknown setting 'jmap-prot' in {path} "
            "(did you mean 'jmap-port'?)",
        )

    def test_unknown_without_guess(self):
        """An unknown name far from any known one has no suggestion."""
        path = self.write_file("zzzzzz: 1\n")
        self.assertEqual(
            self.error_of(file_path=path),
            f"unknown setting 'zzzzzz' in {path}",
        )

    def test_non_string_key(self):
        """A number used as a setting name is an unknown setting."""
        path = self.write_file("8080: jmap-port\n")
        self.assertIn("unknown setting 8080 in", self.error_of(file_path=path))

    def test_underscore_name_in_file(self):
        """Python-style names are not setting names, but are suggested."""
        path = self.write_file("jmap_port: 80\n")
        self.assertIn(
            "(did you mean 'jmap-port'?)", self.error_of(file_path=path)
        )

    def test_duplicate_in_file(self):
        """A setting given twice in the file is rejected, with its line."""
        path = self.write_file("jmap-port: 1\nlog-level: info\njmap-port: 2\n")
        message = self.error_of(file_path=path)
        self.assertIn("at line 3", message)
        self.assertIn("'jmap-port' is given twice", message)

    def test_unknown_on_command_line(self):
        """An unknown name on the command line is rejected."""
        self.assertEqual(
            self.error_of(command_line={"log-levle": "info"}),
            "unknown setting 'log-levle' on the command line "
            "(did you mean 'log-level'?)",
        )


class WeakSecretTests(_ConfigTestMixin, TestCase):
    """
    Secrets shorter than 16 characters stop start-up, named, never shown.
    """

    def test_short_secrets_refused(self):
        """admin-secret and encryption-key of 'a', spaces or 15 characters are refused in one line."""
        for name in ("admin-secret", "encryption-key"):
            for weak in ("a", " ", " " * 20, "Q" * 15, "  fifteen-chars  "):
                message = self.error_of(command_line={name: weak})
                self.assertIn(f"setting {name!r} = <hidden>", message)
                self.assertIn("at least 16 characters", message)
                if len(weak.strip()) > 1:
                    self.assertNotIn(weak.strip(), message)

    def test_long_enough_secret(self):
        """Sixteen characters are enough."""
        settings = load(environ={"ADMIN_SECRET": "x" * 16, "ENCRYPTION_KEY": "k" * 16})
        self.assertEqual((settings.admin_secret, settings.encryption_key), ("x" * 16, "k" * 16))


class CrossCheckTests(_ConfigTestMixin, TestCase):
    """
    Settings that only make sense together.
    """

    def test_cert_without_key(self):
        """jmap-cert-path alone names the missing jmap-key-path."""
        self.assertEqual(
            self.error_of(command_line={"jmap-cert-path": "/c.pem"}),
            "setting 'jmap-key-path' = None (default): expected a non-empty "
            "path, because 'jmap-cert-path' is set (from command line "
            "--jmap-cert-path)",
        )

    def test_key_without_cert(self):
        """lmtp-key-path alone names the missing lmtp-cert-path."""
        message = self.error_of(environ={"LMTP_KEY_PATH": "/k.pem"})
        self.assertTrue(
            message.startswith("setting 'lmtp-cert-path' = None (default)"),
            message,
        )
        self.assertIn("(from environment LMTP_KEY_PATH)", message)

    def test_half_rpc_pair(self):
        """An RPC certificate without a key does not borrow the JMAP key."""
        message = self.error_of(command_line={
            "jmap-cert-path": "/c.pem", "jmap-key-path": "/k.pem",
            "rpc-cert-path": "/rc.pem",
        })
        self.assertIn("'rpc-key-path' = None", message)

    def test_seed_nodes_need_advertise_addr(self):
        """Joining a cluster requires rpc-advertise-addr."""
        self.assertEqual(
            self.error_of(command_line={"seed-nodes": "a.example"}),
            "setting 'rpc-advertise-addr' = None (default): expected an IP "
            "address or a host name, because 'seed-nodes' is set (from "
            "command line --seed-nodes)",
        )

    def test_cluster_needs_its_own_key(self):
        """A node in a cluster needs encryption-key: a generated one would differ per node."""
        self.assertEqual(
            self.error_of(command_line={"rpc-advertise-addr": "10.0.0.1"}),
            "setting 'encryption-key' = None (default): expected a string of at least 16 "
            "characters (spaces around it do not count), because "
            "'rpc-advertise-addr' is set (from command line --rpc-advertise-addr)",
        )

    def test_tls_only_needs_cert(self):
        """lmtp-tls-only without a certificate is rejected."""
        message = self.error_of(environ={"LMTP_TLS_ONLY": "on"})
        self.assertIn("'lmtp-cert-path' = None", message)
        self.assertIn("'lmtp-tls-only' is true", message)


class SettingsObjectTests(_ConfigTestMixin, TestCase):
    """
    The Settings object itself.
    """

    def test_access(self):
        """Values are reachable by Python name and by setting name."""
        settings = load(environ={"DB_PATH": "/srv/mail"})
        self.assertEqual(settings.db_path, "/srv/mail")
        self.assertEqual(settings["db-path"], "/srv/mail")
        self.assertRaises(AttributeError, getattr, settings, "db_pth")
        self.assertRaises(KeyError, settings.__getitem__, "db_path")
        self.assertRaises(KeyError, settings.source, "nope")

    def test_immutable(self):
        """Settings cannot be changed in place."""
        settings = load()
        self.assertRaises(AttributeError, setattr, settings, "jmap_port", 1)
        self.assertRaises(AttributeError, delattr, settings, "jmap_port")
        self.assertEqual(settings.jmap_port, 8080)

    def test_replace(self):
        """replace() returns a validated copy and leaves the original."""
        settings = load()
        changed = settings.replace(jmap_port="9090", strict_cors=True,
                                   rate_limit_auth=Rate(1, 2))
        self.assertEqual(changed.jmap_port, 9090)
        self.assertIs(changed.strict_cors, True)
        self.assertEqual(changed.rate_limit_auth, Rate(1, 2))
        self.assertEqual(changed.source("jmap-port"), "replace")
        self.assertEqual(settings.jmap_port, 8080)
        self.assertIsInstance(changed, Settings)

    def test_replace_keeps_sources(self):
        """replace() keeps the values and sources it does not touch."""
        settings = load(environ={"LMTP_PORT": "2424"}).replace(jmap_port=1)
        self.assertEqual(settings.lmtp_port, 2424)
        self.assertEqual(settings.source("lmtp-port"), "environment")

    def test_replace_invalid(self):
        """replace() validates values, names and combinations."""
        settings = load()
        error = self.assertRaises(ConfigError, settings.replace, jmap_port=-1)
        self.assertEqual(
            str(error),
            "setting 'jmap-port' = -1 (from replace): "
            "expected an integer from 0 to 65535",
        )
        error = self.assertRaises(ConfigError, settings.replace, jmap_prot=1)
        self.assertIn("did you mean 'jmap_port'?", str(error))
        self.assertRaises(
            ConfigError, settings.replace, seed_nodes=("a.example",)
        )
        self.assertRaises(
            ConfigError, settings.replace, rate_limit_auth=Rate(0, 1)
        )

    def test_as_dict(self):
        """as_dict() maps every setting name to its value, in order."""
        values = load().as_dict()
        self.assertEqual(list(values), [s.name for s in SETTINGS])
        self.assertEqual(values["jmap-port"], 8080)

    def test_equality(self):
        """Settings with the same values are equal and hash alike."""
        path = self.write_file("jmap-port: 8080\n")
        self.assertEqual(load(file_path=path), load())
        self.assertEqual(hash(load(file_path=path)), hash(load()))
        self.assertNotEqual(load(), load().replace(jmap_port=1))

    def test_repr_hides_secrets(self):
        """repr() shows values but never secrets."""
        settings = load(environ={"ENCRYPTION_KEY": "topsecret-topsecret"})
        self.assertIn("jmap_port=8080", repr(settings))
        self.assertIn("encryption_key=<hidden>", repr(settings))
        self.assertNotIn("topsecret", repr(settings))

    def test_dir(self):
        """dir() lists the setting attributes, for the admin shell."""
        self.assertIn("jmap_port", dir(load()))


class ShippedConfigTests(TestCase):
    """
    The etc/config.yml shipped with the server.
    """

    def read_lines(self):
        with open(SHIPPED_CONFIG, encoding="utf-8") as stream:
            return stream.read().splitlines()

    def test_loads_to_defaults(self):
        """The shipped file loads without error and yields the defaults."""
        settings = load(file_path=SHIPPED_CONFIG)
        self.assertEqual(settings.as_dict(), load().as_dict())

    def test_every_setting_listed_in_order(self):
        """Every setting appears in the file, in registry order."""
        pattern = re.compile(r"^(?:# )?([a-z][a-z0-9-]*):(?: |$)")
        listed = [
            match.group(1)
            for match in map(pattern.match, self.read_lines())
            if match and match.group(1) in SETTINGS_BY_NAME
        ]
        self.assertEqual(listed, [setting.name for setting in SETTINGS])

    def test_commented_examples_valid(self):
        """With every commented-out setting enabled, the file still loads."""
        pattern = re.compile(r"^# ([a-z][a-z0-9-]*: .*)$")
        enabled = [
            pattern.sub(r"\1", line)
            if pattern.match(line)
            and pattern.match(line).group(1).split(":")[0] in SETTINGS_BY_NAME
            else line
            for line in self.read_lines()
        ]
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as stream:
            stream.write("\n".join(enabled) + "\n")
        settings = load(file_path=path)
        for setting in SETTINGS:
            if setting.default is None or setting.default == ():
                self.assertNotEqual(
                    settings[setting.name], setting.default, setting.name
                )
