"""
The kinds of setting: how one setting's raw value becomes a typed value.

A kind is a name (C{"integer"}, C{"rate"}, C{"node-list"}, ...) that a
L{stalwart_tw.config.Setting} carries.  Its parser in L{_PARSERS} takes the
setting and the raw value (a string from the command line or the
environment, or a YAML scalar or list, or an already parsed value) and
returns the typed value, or raises L{_Invalid}; its entry in L{_EXPECTED}
says, for error messages and help, what a valid value looks like.  Parsers
read only the setting's bounds and choices: the setting name and where the
value came from are added by the caller.
"""

from __future__ import annotations

import ipaddress
import re
from collections import namedtuple
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlsplit

if TYPE_CHECKING:
    # Only for annotations: config imports this module.
    from stalwart_tw.config import Setting


Rate = namedtuple("Rate", ["count", "seconds"])
Rate.__doc__ = "At most C{count} events per C{seconds} seconds."

Schedule = namedtuple("Schedule", ["minute", "hour", "weekday"])
Schedule.__doc__ = (
    "A daily or weekly time, local: C{weekday} is 1 (Monday) to 7, or None "
    "for every day."
)


class _Invalid(ValueError):
    """A parser rejected a value; the caller adds the setting and source."""


# ---------------------------------------------------------------------------
# Parsers: each takes (setting, raw) and returns the value or raises _Invalid.

_DIGITS = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset(["true", "yes", "on", "1"])
_FALSE = frozenset(["false", "no", "off", "0"])
_LANGUAGE = re.compile(r"[a-z]{2}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SEMICOLON_KINDS = frozenset(["address-list", "node-list"])


def _text(raw: Any) -> str:
    """The stripped string form of a raw value that must be a string."""
    if not isinstance(raw, str):
        raise _Invalid()
    return raw.strip()


def _parse_integer(setting: Setting, raw: Any) -> int:
    # bool is an int subclass, but `jmap-port: yes` is a mistake, not 1.
    if isinstance(raw, bool):
        raise _Invalid()
    if isinstance(raw, int):
        value = raw
    elif _DIGITS.fullmatch(_text(raw)):
        value = int(raw)
    else:
        raise _Invalid()
    if setting.minimum is not None and value < setting.minimum:
        raise _Invalid()
    if setting.maximum is not None and value > setting.maximum:
        raise _Invalid()
    return value


def _parse_boolean(setting: Setting, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    word = _text(raw).lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _Invalid()


def _parse_string(setting: Setting, raw: Any) -> str:
    # Free text keeps its spaces: sieve-vacation-subject-prefix is "Auto: ".
    if not isinstance(raw, str):
        raise _Invalid()
    # A minimum is a secret's: spaces around it do not count towards it.
    if setting.minimum is not None and len(raw.strip()) < setting.minimum:
        raise _Invalid()
    return raw


def _parse_path(setting: Setting, raw: Any) -> str:
    path = _text(raw)
    if not path:
        raise _Invalid()
    return path


def _parse_choice(setting: Setting, raw: Any) -> str:
    word = _text(raw).lower()
    if word not in setting.choices:
        raise _Invalid()
    return word


def _parse_rate(setting: Setting, raw: Any) -> Rate:
    if isinstance(raw, Rate):
        raw = setting.format(raw)
    count, slash, seconds = _text(raw).partition("/")
    if not slash:
        raise _Invalid()
    return Rate(_whole(count, 1), _whole(seconds, 1))


def _parse_schedule(setting: Setting, raw: Any) -> Schedule:
    if isinstance(raw, Schedule):
        raw = setting.format(raw)
    fields = _text(raw).split()
    if len(fields) != 3:
        raise _Invalid()
    minute, hour, weekday = fields
    return Schedule(
        _whole(minute, 0, 59),
        _whole(hour, 0, 23),
        None if weekday == "*" else _whole(weekday, 1, 7),
    )


def _whole(text: str, minimum: int, maximum: Optional[int] = None) -> int:
    """A bare decimal number within bounds: part of a rate, schedule, port."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise _Invalid()
    value = int(text)
    if value < minimum or (maximum is not None and value > maximum):
        raise _Invalid()
    return value


def _parse_url(setting: Setting, raw: Any) -> str:
    url = _text(raw)
    if any(character.isspace() for character in url):
        raise _Invalid()
    parts = urlsplit(url)
    _ = parts.port  # a port out of range raises ValueError here
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid()
    # A base URL with credentials, a query or a fragment cannot be extended
    # with /jmap/... paths.
    if parts.username is not None or parts.query or parts.fragment:
        raise _Invalid()
    return url.rstrip("/")


def _parse_ip(setting: Setting, raw: Any) -> str:
    return str(ipaddress.ip_address(_text(raw)))


def _parse_host(setting: Setting, raw: Any) -> str:
    host = _text(raw)
    if not _is_host(host):
        raise _Invalid()
    return host


def _is_host(host: str) -> bool:
    """Whether C{host} is an IP literal or an RFC 1123 host name."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return (
        len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        # An all-digit last label is a mistyped IPv4 address, not a name.
        and not labels[-1].isdigit()
    )


def _parse_language(setting: Setting, raw: Any) -> str:
    code = _text(raw)
    if not _LANGUAGE.fullmatch(code):
        raise _Invalid()
    return code


def _items(raw: Any, separator: Optional[str]) -> tuple:
    """Split a list setting; a YAML list is taken as already split."""
    if isinstance(raw, (list, tuple)):
        if not all(isinstance(item, str) for item in raw):
            raise _Invalid()
        pieces = raw
    else:
        pieces = _text(raw).split(separator)
    return tuple(piece.strip() for piece in pieces if piece.strip())


def _parse_words(setting: Setting, raw: Any) -> tuple:
    return _items(raw, None)


def _parse_address_list(setting: Setting, raw: Any) -> tuple:
    addresses = _items(raw, ";")
    for address in addresses:
        ipaddress.ip_network(address, strict=False)
    return addresses


def _parse_node_list(setting: Setting, raw: Any) -> tuple:
    nodes = _items(raw, ";")
    for node in nodes:
        _check_node(node)
    return nodes


def _check_node(node: str) -> None:
    """Check one C{host[:port]} seed; IPv6 with a port is C{[::1]:7911}."""
    if node.startswith("["):
        host, bracket, rest = node[1:].partition("]")
        if not bracket or ipaddress.ip_address(host).version != 6:
            raise _Invalid()
        port = rest[1:] if rest.startswith(":") else None
        if rest and port is None:
            raise _Invalid()
    elif node.count(":") == 1:
        host, _, port = node.partition(":")
    else:
        # No colon, or a bare IPv6 literal (which must then be valid).
        host, port = node, None
    if not _is_host(host):
        raise _Invalid()
    if port is not None:
        _whole(port, 1, 65535)


_PARSERS = {
    "integer": _parse_integer,
    "boolean": _parse_boolean,
    "string": _parse_string,
    "path": _parse_path,
    "choice": _parse_choice,
    "rate": _parse_rate,
    "schedule": _parse_schedule,
    "url": _parse_url,
    "ip": _parse_ip,
    "host": _parse_host,
    "language": _parse_language,
    "words": _parse_words,
    "address-list": _parse_address_list,
    "node-list": _parse_node_list,
}


def _expected_integer(setting: Setting) -> str:
    if setting.maximum is not None:
        return f"an integer from {setting.minimum} to {setting.maximum}"
    return f"an integer >= {setting.minimum}"


_EXPECTED = {
    "integer": _expected_integer,
    "boolean": lambda s: "a boolean (true/false, yes/no, on/off, 1/0)",
    "string": lambda s: (
        "a string" if s.minimum is None
        else f"a string of at least {s.minimum} characters (spaces around it do not count)"
    ),
    "path": lambda s: "a non-empty path",
    "choice": lambda s: "one of: " + ", ".join(s.choices),
    "rate": lambda s: "a rate 'count/seconds' with both >= 1, like '10/60'",
    "schedule": lambda s: (
        "a schedule 'minute hour weekday' with minute 0-59, hour 0-23 and "
        "weekday 1-7 or *, like '30 3 *'"
    ),
    "url": lambda s: "an http or https URL with a host, like "
    "'https://mail.example.com'",
    "ip": lambda s: "an IPv4 or IPv6 address",
    "host": lambda s: "an IP address or a host name",
    "language": lambda s: "a two-letter lowercase ISO 639-1 code, like 'en'",
    "words": lambda s: "space-separated words",
    "address-list": lambda s: "';'-separated IP addresses or networks",
    "node-list": lambda s: "';'-separated host[:port] entries, port 1-65535",
}
