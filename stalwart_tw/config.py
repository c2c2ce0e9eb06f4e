"""
Settings of a stalwart_tw node: the registry and the loader.

How each kind of value is parsed lives in L{stalwart_tw.setting_kinds}.

Every setting has one name, used three ways: C{name: value} in the YAML file
given with C{--config}, C{--name=value} on the command line, and C{NAME} (upper
case, C{-} -> C{_}) in the environment.  Precedence, highest first::

    environment > command line > YAML file > default

Every value that is given is validated, even one that a higher source
overrides: a broken file is a bug whether or not it happens to be shadowed.
A few defaults are derived from other settings (C{rpc-bind-addr} follows
C{jmap-bind-addr}, C{worker-pool-size} is the CPU count); they are computed
after the sources are merged, so they follow whatever the operator set.

Error contract: every problem (missing or unreadable file, bad YAML, unknown
name, bad value, inconsistent settings) raises L{ConfigError}, whose C{str()}
is exactly one line meant to be printed as-is at start-up, e.g.::

    setting 'jmap-port' = 'abc' (from environment JMAP_PORT): expected an
    integer from 0 to 65535

(on one line).  No other exception escapes L{load_settings} or
L{Settings.replace}.
"""

import dataclasses
import difflib
import os
from collections import namedtuple
from typing import Any, Callable, Mapping, Optional

import yaml

from stalwart_tw.setting_kinds import (
    _EXPECTED,
    _PARSERS,
    _SEMICOLON_KINDS,
    Rate,
    Schedule,
    _Invalid,
)

# The shortest secret a node takes (admin-secret, encryption-key, the key
# file it generates): every gossip and RPC key is derived from the
# encryption key, so a short one could be guessed from one captured packet.
MIN_SECRET_LENGTH = 16


class ConfigError(Exception):
    """
    A setting, or the file holding them, is unusable.  C{str()} is one line.

    @ivar setting: the setting name concerned, or C{None} for file errors.
    """

    def __init__(self, message: str, setting: Optional[str] = None) -> None:
        # The one-line promise is kept here, once, whatever the message holds
        # (a YAML problem or a file name may carry a line break).
        super().__init__(" ".join(str(message).splitlines()))
        self.setting = setting


@dataclasses.dataclass(frozen=True)
class Setting:
    """
    One setting: its name, how to parse it and what it defaults to.

    @ivar kind: the key of the parser in
        L{stalwart_tw.setting_kinds._PARSERS}.
    @ivar default: the parsed default value; C{None} means unset, or derived
        when C{derive} is given.
    @ivar derive: computes the default from the merged values of the other
        settings (given or default, derived ones still C{None}).
    @ivar secret: the value is never shown in messages or C{repr}.
    """

    name: str
    kind: str
    default: Any
    help: str
    minimum: Optional[int] = None
    maximum: Optional[int] = None
    choices: tuple = ()
    derive: Optional[Callable[[dict], Any]] = None
    secret: bool = False
    group: str = ""

    @property
    def python_name(self) -> str:
        """The attribute name on L{Settings}: C{jmap-port} -> C{jmap_port}."""
        return self.name.replace("-", "_")

    @property
    def env_name(self) -> str:
        """The environment variable: C{jmap-port} -> C{JMAP_PORT}."""
        return self.name.upper().replace("-", "_")

    @property
    def nullable(self) -> bool:
        """Whether the setting may be left unset (None, or an empty string)."""
        return self.default is None

    @property
    def expected(self) -> str:
        """What a valid value looks like, for error messages and help."""
        return _EXPECTED[self.kind](self)

    def parse(self, raw: Any) -> Any:
        """
        Turn a raw value (a string, or a YAML scalar or list, or an already
        parsed value) into the setting's value.

        @raise ValueError: the value is not acceptable (see C{expected}).
        """
        if self.nullable and (raw is None or raw == ""):
            return None
        try:
            return _PARSERS[self.kind](self, raw)
        except (TypeError, ValueError):
            # Parsers check types first; this only backs the promise that a
            # bad value never surfaces as a traceback.
            raise _Invalid() from None

    def format(self, value: Any) -> str:
        """Write a parsed value back as the string C{parse} accepts."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, Rate):
            return f"{value.count}/{value.seconds}"
        if isinstance(value, Schedule):
            weekday = "*" if value.weekday is None else value.weekday
            return f"{value.minute} {value.hour} {weekday}"
        if isinstance(value, tuple):
            return (";" if self.kind in _SEMICOLON_KINDS else " ").join(value)
        return str(value)


# ---------------------------------------------------------------------------
# The registry, in the order and groups of CONFIG.md.


def _int(name, default, help, minimum=0, maximum=None):
    return Setting(name, "integer", default, help, minimum, maximum)


def _port(name, default, help, minimum=0):
    return Setting(name, "integer", default, help, minimum, 65535)


def _bool(name, default, help):
    return Setting(name, "boolean", default, help)


def _kind(kind, name, default, help, **extra):
    return Setting(name, kind, default, help, **extra)


def _section(group, *settings):
    return tuple(dataclasses.replace(s, group=group) for s in settings)


def _cpu_count(merged: dict) -> int:
    return max(1, os.cpu_count() or 1)


def _rpc_bind_addr(merged: dict) -> str:
    return merged["jmap-bind-addr"]


def _rpc_cert_path(merged: dict) -> Optional[str]:
    # The JMAP pair is only borrowed whole: half an RPC pair is an error.
    if merged["rpc-key-path"] is None:
        return merged["jmap-cert-path"]
    return None


def _rpc_key_path(merged: dict) -> Optional[str]:
    if merged["rpc-cert-path"] is None:
        return merged["jmap-key-path"]
    return None


SETTINGS = (
    *_section(
        "Node and storage",
        _kind("path", "db-path", "./stalwart-data",
              "folder for the SQLite database (idx/) and blob files (blobs/)"),
        _kind("choice", "log-level", "info",
              "log verbosity: error, warn, info, debug or trace",
              choices=("error", "warn", "info", "debug", "trace")),
        _int("blob-nested-levels", 2,
             "levels of hashed sub-folders for blob files (count)"),
        _int("blob-min-size", 16384,
             "bytes; metadata blobs below this size stay in the database"),
        _int("blob-temp-ttl", 3600,
             "seconds before an uploaded, unreferenced blob is purged", 1),
        _kind("integer", "worker-pool-size", None,
              "threads for blocking work (count; default: number of CPUs)",
              minimum=1, derive=_cpu_count),
        _kind("integer", "worker-processes", None,
              "processes for CPU-heavy parsing of messages (count; default: number "
              "of CPUs; 0 parses on the worker threads)",
              minimum=0, derive=_cpu_count),
        _kind("string", "admin-secret", None,
              "password of the built-in admin principal (text of at least "
              f"{MIN_SECRET_LENGTH} characters; generated and shown once on the "
              "terminal at first start when absent)", secret=True,
              minimum=MIN_SECRET_LENGTH),
    ),
    *_section(
        "JMAP web server",
        _kind("url", "jmap-url", "http://127.0.0.1:8080",
              "base URL advertised in the Session resource (http/https URL)"),
        _kind("ip", "jmap-bind-addr", "127.0.0.1",
              "IP address to listen on (0.0.0.0 for all)"),
        _port("jmap-port", 8080, "TCP port of the JMAP web server"),
        _kind("path", "jmap-cert-path", None,
              "PEM certificate file; with jmap-key-path, serve HTTPS"),
        _kind("path", "jmap-key-path", None,
              "PEM private key file; with jmap-cert-path, serve HTTPS"),
        _bool("strict-cors", False,
              "boolean; true: same-origin only, false: permissive CORS"),
        _bool("use-forwarded-header", False,
              "boolean; take the client address from Forwarded or "
              "X-Forwarded-For"),
        _int("cache-size-ids", 33554432, "bytes of the id cache"),
        _int("cache-tti-ids", 3600, "seconds an idle id cache entry lives"),
        _int("cache-tti-sharings", 300,
             "seconds an idle sharing cache entry lives"),
        _int("cache-tti-acl", 3600, "seconds an idle ACL cache entry lives"),
        _int("cache-tti-recipients", 86400,
             "seconds an idle recipient cache entry lives"),
    ),
    *_section(
        "Limits and rate limits",
        _int("max-size-upload", 50000000, "bytes per upload", 1),
        _int("max-size-request", 10000000, "bytes per API request", 1),
        _int("max-calls-in-request", 16, "method calls per request", 1),
        _int("max-json-depth", 64,
             "levels of nesting in a request body (arrays and objects)", 2, 200),
        _int("http-header-timeout", 10,
             "seconds a request's headers may take to arrive (0: no deadline)"),
        _int("max-connections", 0,
             "open HTTP connections at once (0: what the file-descriptor limit allows)"),
        _int("max-connections-per-address", 256,
             "open HTTP connections at once from one client address", 1),
        _int("max-objects-in-get", 500, "ids per /get call", 1),
        _int("max-objects-in-set", 500,
             "create + update + destroy per /set call", 1),
        _int("query-max-results", 5000, "ids per /query call", 1),
        _int("changes-max-results", 5000, "ids per /changes call", 1),
        _int("max-concurrent-requests", 4,
             "concurrent API requests per account", 1),
        _int("max-concurrent-uploads", 4, "concurrent uploads per account", 1),
        _kind("rate", "rate-limit-auth", Rate(10, 60),
              "N/S: N authentication attempts per S seconds per client "
              "address"),
        _kind("rate", "rate-limit-anonymous", Rate(100, 60),
              "N/S: N unauthenticated requests per S seconds per client "
              "address"),
        _kind("rate", "rate-limit-authenticated", Rate(1000, 60),
              "N/S: N requests per S seconds per authenticated account"),
    ),
    *_section(
        "Mail",
        _kind("language", "default-language", "en",
              "ISO 639-1 code used when a message's language is unknown"),
        _int("mail-max-size", 104857600, "bytes per message", 1),
        _int("mail-attachments-max-size", 50000000,
             "bytes of attachments per message"),
        _int("mail-import-max-items", 5, "messages per Email/import", 1),
        _int("mail-parse-max-items", 5, "messages per Email/parse", 1),
        _int("mailbox-name-max-len", 255, "characters per mailbox name", 1),
        _int("mailbox-max-total", 1000, "mailboxes per account", 1),
        _int("mailbox-max-depth", 10, "mailbox nesting levels", 1),
    ),
    *_section(
        "Push and WebSocket",
        _int("event-source-throttle", 1000, "ms between EventSource events"),
        _int("ws-client-timeout", 10,
             "seconds before an idle WebSocket is dropped", 1),
        _int("ws-heartbeat-interval", 5, "seconds between WebSocket pings", 1),
        _int("ws-throttle", 1000,
             "ms between batches of state changes on a WebSocket"),
        _int("push-max-total", 100, "push subscriptions per account"),
        _int("push-attempt-interval", 60000,
             "ms between push delivery attempts", 1),
        _int("push-attempts-max", 3,
             "attempts before a push notification is dropped", 1),
        _int("push-retry-interval", 1000, "ms between push retries", 1),
        _int("push-timeout", 10000, "ms before a push request times out", 1),
        _int("push-verify-timeout", 60000,
             "ms to wait for push verification", 1),
        _int("push-throttle", 1000, "ms between requests to one push service"),
    ),
    *_section(
        "LMTP and outbound SMTP",
        _kind("ip", "lmtp-bind-addr", "127.0.0.1", "LMTP listen IP address"),
        _port("lmtp-port", 11200, "TCP port of the LMTP server"),
        _kind("path", "lmtp-cert-path", None,
              "PEM certificate file; with lmtp-key-path, enable STARTTLS"),
        _kind("path", "lmtp-key-path", None,
              "PEM private key file; with lmtp-cert-path, enable STARTTLS"),
        _bool("lmtp-tls-only", False,
              "boolean; every LMTP connection starts in TLS"),
        _kind("address-list", "lmtp-trusted-ips", (),
              "';'-separated IP addresses or networks allowed to connect "
              "besides loopback"),
        _kind("host", "smtp-relay-host", "127.0.0.1",
              "host name or IP address of the SMTP relay for EmailSubmission"),
        _port("smtp-relay-port", 25, "TCP port of the SMTP relay", 1),
        _kind("string", "smtp-relay-auth", None,
              "user name for the SMTP relay (text)"),
        _kind("string", "smtp-relay-secret", None,
              "password for the SMTP relay (text)", secret=True),
        _bool("smtp-relay-tls", False, "boolean; use TLS to the SMTP relay"),
        _int("smtp-relay-timeout", 60000, "ms before the SMTP relay times out",
             1),
    ),
    *_section(
        "OAuth",
        _kind("string", "encryption-key", None,
              f"secret that signs tokens and keys the cluster (text of at least "
              f"{MIN_SECRET_LENGTH} characters; generated at first start when absent, "
              "single node only)",
              secret=True, minimum=MIN_SECRET_LENGTH),
        _int("oauth-user-code-expiry", 1800,
             "seconds a device flow user code lives", 1),
        _int("oauth-auth-code-expiry", 600,
             "seconds an authorization code lives", 1),
        _int("oauth-token-expiry", 3600, "seconds an access token lives", 1),
        _int("oauth-refresh-token-expiry", 2592000,
             "seconds a refresh token lives", 1),
        _int("oauth-refresh-token-renew", 345600,
             "seconds left on a refresh token before a new one is issued"),
        _int("oauth-max-attempts", 3,
             "failed logins before a code is invalidated (count)", 1),
    ),
    *_section(
        "Sieve",
        _kind("words", "sieve-disable-capabilities", (),
              "space-separated Sieve capabilities to disable"),
        _int("sieve-max-script-size", 1048576, "bytes per Sieve script", 1),
        _int("sieve-max-string-size", 4096, "bytes per Sieve string", 1),
        _int("sieve-max-variable-name-size", 32,
             "characters per Sieve variable name", 1),
        _int("sieve-max-nested-blocks", 15, "nesting levels of Sieve blocks",
             1),
        _int("sieve-max-nested-tests", 15, "nesting levels of Sieve tests", 1),
        _int("sieve-max-nested-foreverypart", 3,
             "nesting levels of Sieve foreverypart loops"),
        _int("sieve-max-match-variables", 30,
             "Sieve match variables per script (count)"),
        _int("sieve-max-local-variables", 128,
             "Sieve local variables per script (count)"),
        _int("sieve-max-header-size", 1024,
             "bytes per header added by Sieve", 1),
        _int("sieve-max-includes", 3, "Sieve includes per script (count)"),
        _int("sieve-cpu-limit", 5000,
             "Sieve instructions per script run (count)", 1),
        _int("sieve-max-nested-includes", 3,
             "nesting levels of Sieve includes"),
        _int("sieve-max-variable-size", 4096,
             "bytes per Sieve variable value", 1),
        _int("sieve-max-redirects", 1, "Sieve redirects per message (count)"),
        _int("sieve-max-received-headers", 10,
             "Received headers before Sieve assumes a loop (count)", 1),
        _int("sieve-max-outgoing-messages", 3,
             "messages a Sieve script may send per run (count)"),
        _kind("words", "sieve-protected-headers",
              ("Original-Subject", "Original-From", "Received",
               "Auto-Submitted"),
              "space-separated header names Sieve may not change"),
        _int("sieve-default-vacation-expiry", 2592000,
             "seconds before a vacation reply is sent again to a sender", 1),
        _int("sieve-default-duplicate-expiry", 604800,
             "seconds the Sieve duplicate test remembers a message", 1),
        _kind("words", "sieve-notification-uris", ("mailto",),
              "space-separated URI schemes Sieve notify may use"),
        _kind("string", "sieve-vacation-default-subject", "Automated reply",
              "subject of a vacation reply when the script sets none (text)"),
        _kind("string", "sieve-vacation-subject-prefix", "Auto: ",
              "text put before the original subject of a vacation reply"),
    ),
    *_section(
        "Cluster",
        _kind("node-list", "seed-nodes", (),
              "';'-separated host[:port] of nodes to join (port defaults to "
              "rpc-port); empty: run alone"),
        _kind("ip", "rpc-bind-addr", None,
              "IP address for RPC (TCP) and gossip (UDP) (default: "
              "jmap-bind-addr)", derive=_rpc_bind_addr),
        _kind("host", "rpc-advertise-addr", None,
              "IP address or host name other nodes use to reach this one "
              "(required in a cluster)"),
        _port("rpc-port", 7911, "TCP port of RPC and UDP port of gossip"),
        _kind("path", "rpc-cert-path", None,
              "PEM certificate file for RPC TLS (default: jmap-cert-path, "
              "else self-signed)", derive=_rpc_cert_path),
        _kind("path", "rpc-key-path", None,
              "PEM private key file for RPC TLS (default: jmap-key-path, "
              "else self-signed)", derive=_rpc_key_path),
        _kind("host", "rpc-tls-domain", None,
              "host name peer certificates must carry (absent with "
              "self-signed certificates)"),
        _int("rpc-inactivity-timeout", 300000,
             "ms before an idle RPC connection closes", 1),
        _int("rpc-timeout", 1000,
             "ms before an RPC connection attempt is abandoned", 1),
        _int("rpc-retries-max", 5,
             "RPC reconnection attempts before waiting for gossip (count)"),
        _int("rpc-backoff-max", 180000,
             "ms, cap of the RPC reconnection backoff", 1),
        _int("peer-ping-interval", 500, "ms between gossip pings", 1),
        _int("raft-batch-max", 10485760, "bytes per AppendEntries batch", 1),
        _int("raft-commit-timeout", 1000,
             "ms to wait for a majority before serverPartialFail", 1),
        _int("raft-election-timeout", 1000,
             "ms, base of the randomised election timeout", 1),
        _kind("choice", "cluster-role", "voter",
              "voter, or replica (a read replica that never votes or leads)",
              choices=("voter", "replica")),
    ),
    *_section(
        "Housekeeper",
        _kind("schedule", "schedule-purge-accounts", Schedule(0, 3, None),
              "local time to purge deleted accounts (minute hour weekday)"),
        _kind("schedule", "schedule-purge-blobs", Schedule(30, 3, None),
              "local time to purge unreferenced blobs (minute hour weekday)"),
        _kind("schedule", "schedule-snapshot-log", Schedule(45, 3, None),
              "local time to snapshot the Raft log (minute hour weekday)"),
        _kind("schedule", "schedule-compact-db", Schedule(0, 4, None),
              "local time to compact the database (minute hour weekday)"),
        _int("max-changelog-entries", 10000,
             "change log entries kept per account and type (count)", 1),
    ),
    *_section(
        "Admin shell",
        _kind("ip", "manhole-bind-addr", "127.0.0.1",
              "IP address of the admin shell (loopback unless set)"),
        _port("manhole-port", 7922,
              "telnet TCP port of the admin shell; 0 disables it"),
    ),
)

SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}
_BY_PYTHON_NAME = {setting.python_name: setting for setting in SETTINGS}


# ---------------------------------------------------------------------------
# Where values come from.


class _Origin(namedtuple("_Origin", ["kind", "detail"])):
    """Where a value came from: a source kind and, for messages, which one."""

    def __str__(self) -> str:
        if self.kind == "default":
            return "default"
        parts = ("from", self.kind, self.detail)
        return " ".join(part for part in parts if part)


_DEFAULT = _Origin("default", "")
_REPLACED = _Origin("replace", "")


def _show(setting: Setting, value: Any) -> str:
    """A value as shown in one line of a message; secrets stay hidden."""
    if setting.secret and value is not None:
        return "<hidden>"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _invalid_value(setting: Setting, raw: Any, origin: _Origin) -> ConfigError:
    return ConfigError(
        f"setting {setting.name!r} = {_show(setting, raw)} ({origin}): "
        f"expected {setting.expected}",
        setting.name,
    )


def _parse_given(setting: Setting, raw: Any, origin: _Origin) -> tuple:
    """Parse one given value into C{(name, value, origin)}, or raise."""
    try:
        return setting.name, setting.parse(raw), origin
    except _Invalid:
        raise _invalid_value(setting, raw, origin) from None


def _unknown(name: Any, where: str, known=SETTINGS_BY_NAME) -> ConfigError:
    suggestion = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {suggestion[0]!r}?)" if suggestion else ""
    return ConfigError(f"unknown setting {name!r} {where}{hint}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """
    A SafeLoader that refuses a key given twice instead of keeping the last.

    A repeated setting in a file is a mistake whose effect (last one wins)
    nobody reading the top of the file would guess.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"setting {key!r} is given twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, "rb") as stream:
            text = stream.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found") from None
    except OSError as error:
        raise ConfigError(
            f"config file {path!r} cannot be read: {error.strerror}"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    # Deep nesting exhausts the recursive composer of PyYAML.
    except (yaml.YAMLError, RecursionError) as error:
        raise ConfigError(
            f"config file {path!r} is not valid YAML{_yaml_where(error)}"
        ) from None


def _yaml_where(error: yaml.YAMLError) -> str:
    """The line, column and problem of a YAML error, as a message tail."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or problem is None:
        return f": {error}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _from_file(path: str) -> list:
    document = _read_yaml(path)
    if document is None:  # empty, or only comments
        return []
    if not isinstance(document, dict):
        raise ConfigError(
            f"config file {path!r} must be a mapping of setting names to "
            f"values, not a {type(document).__name__}"
        )
    given = []
    for name, raw in document.items():
        setting = SETTINGS_BY_NAME.get(name) if isinstance(name, str) else None
        if setting is None:
            raise _unknown(name, f"in {path}")
        given.append(_parse_given(setting, raw, _Origin("file", path)))
    return given


def _from_command_line(command_line: Mapping[str, Any]) -> list:
    given = []
    for name, raw in command_line.items():
        # twistd Options report every option, with None for those not given.
        if raw is None:
            continue
        setting = SETTINGS_BY_NAME.get(name)
        if setting is None:
            raise _unknown(name, "on the command line")
        origin = _Origin("command line", f"--{name}")
        given.append(_parse_given(setting, raw, origin))
    return given


def _from_environment(environ: Mapping[str, str]) -> list:
    # Only our names are looked up: the environment is full of other things.
    return [
        _parse_given(setting, environ[setting.env_name],
                     _Origin("environment", setting.env_name))
        for setting in SETTINGS
        if setting.env_name in environ
    ]


def load_settings(
    file_path: Optional[str] = None,
    command_line: Optional[Mapping[str, Any]] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> "Settings":
    """
    Read, validate and merge the settings from every source.

    @param file_path: the YAML file, or C{None} for none.
    @param command_line: C{{setting-name: raw string}} as collected by the
        twistd Options; C{None} values mean "not given".
    @param environ: the environment, C{os.environ} when C{None}.
    @raise ConfigError: anything is wrong; its C{str()} is one line.
    """
    if environ is None:
        environ = os.environ
    given = {}
    # Later sources win: this list is the precedence, lowest first.
    for layer in (
        _from_file(file_path) if file_path is not None else [],
        _from_command_line(command_line or {}),
        _from_environment(environ),
    ):
        for name, value, origin in layer:
            given[name] = (value, origin)
    return Settings._resolve(given)


# ---------------------------------------------------------------------------
# Settings that only make sense together.

_PAIRS = (
    ("jmap-cert-path", "jmap-key-path"),
    ("lmtp-cert-path", "lmtp-key-path"),
    ("rpc-cert-path", "rpc-key-path"),
)


def _required(
    origins: dict, missing: str, cause: str, why: str
) -> ConfigError:
    """The error for C{missing} being unset although C{cause} needs it."""
    return ConfigError(
        f"setting {missing!r} = None ({origins[missing]}): expected "
        f"{SETTINGS_BY_NAME[missing].expected}, because {cause!r} {why} "
        f"({origins[cause]})",
        missing,
    )


def _check_together(values: dict, origins: dict) -> None:
    for first, second in _PAIRS:
        for present, absent in ((first, second), (second, first)):
            if values[present] is not None and values[absent] is None:
                raise _required(origins, absent, present, "is set")
    if values["seed-nodes"] and values["rpc-advertise-addr"] is None:
        raise _required(origins, "rpc-advertise-addr", "seed-nodes", "is set")
    # A generated key would differ on every node: a cluster needs its own.
    if values["rpc-advertise-addr"] is not None and values["encryption-key"] is None:
        raise _required(origins, "encryption-key", "rpc-advertise-addr", "is set")
    # The key pair is checked above, so the certificate stands for both.
    if values["lmtp-tls-only"] and values["lmtp-cert-path"] is None:
        raise _required(origins, "lmtp-cert-path", "lmtp-tls-only", "is true")


class Settings:
    """
    The validated settings of a node; immutable.

    Read a value as an attribute with its Python name (C{settings.jmap_port})
    or as an item with its setting name (C{settings["jmap-port"]}).  Build
    one with L{load_settings}, or derive one from another with L{replace}.
    """

    __slots__ = ("_values", "_origins", "_given")

    def __init__(self, values: dict, origins: dict, given: dict) -> None:
        # Private: values are trusted to be parsed and checked already.
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_origins", origins)
        # The values actually given, kept so replace() can derive again.
        object.__setattr__(self, "_given", given)

    @classmethod
    def _resolve(cls, given: dict) -> "Settings":
        """Fill defaults, derive the derived ones, check the combinations."""
        merged = {
            s.name: given[s.name][0] if s.name in given else s.default
            for s in SETTINGS
        }
        values = {}
        for setting in SETTINGS:
            value = merged[setting.name]
            if value is None and setting.derive is not None:
                value = setting.derive(merged)
            values[setting.name] = value
        origins = {
            s.name: given[s.name][1] if s.name in given else _DEFAULT
            for s in SETTINGS
        }
        _check_together(values, origins)
        return cls(values, origins, dict(given))

    def __getattr__(self, python_name: str) -> Any:
        setting = _BY_PYTHON_NAME.get(python_name)
        if setting is None:
            raise AttributeError(f"no setting named {python_name!r}")
        return self._values[setting.name]

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Settings are immutable; use replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Settings are immutable; use replace()")

    def __dir__(self) -> list:
        return sorted(set(super().__dir__()) | set(_BY_PYTHON_NAME))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{s.python_name}={_show(s, self._values[s.name])}"
            for s in SETTINGS
        )
        return f"Settings({shown})"

    def replace(self, **changes: Any) -> "Settings":
        """
        A copy with some values changed, given by Python name, as raw strings
        or parsed values; derived defaults are derived again.

        @raise ConfigError: a name is unknown or a value is invalid.
        """
        given = dict(self._given)
        for python_name, raw in changes.items():
            setting = _BY_PYTHON_NAME.get(python_name)
            if setting is None:
                raise _unknown(python_name, "in replace()", _BY_PYTHON_NAME)
            name, value, origin = _parse_given(setting, raw, _REPLACED)
            given[name] = (value, origin)
        return Settings._resolve(given)

    def source(self, name: str) -> str:
        """
        Where a value came from: C{"default"}, C{"file"}, C{"command line"},
        C{"environment"}, or C{"replace"}.

        @param name: the setting name (C{jmap-port}) or Python name.
        """
        setting = SETTINGS_BY_NAME.get(name) or _BY_PYTHON_NAME.get(name)
        if setting is None:
            raise KeyError(name)
        return self._origins[setting.name].kind

    def as_dict(self) -> dict:
        """Every value by setting name, in registry order."""
        return dict(self._values)
