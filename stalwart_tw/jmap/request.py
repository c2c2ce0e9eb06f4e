"""
The JMAP request envelope (RFC 8620 sections 3.3 to 3.7): decoding the
body, checking it against the Request type and the request limits, and
resolving result references between method calls.

Decoding is strict, as I-JSON (RFC 7493) asks: the body must be UTF-8, an
object may not repeat a member name, and NaN or Infinity are not numbers.
Each fault is a L{RequestError} of the precise type, so a client learns
what was wrong with the request rather than a generic failure.
"""

import json
import math
import re
from array import array
from dataclasses import dataclass
from itertools import accumulate

import orjson

from stalwart_tw.jmap.errors import (
    INVALID_RESULT_REFERENCE,
    LIMIT,
    NOT_JSON,
    NOT_REQUEST,
    UNKNOWN_CAPABILITY,
    MethodError,
    RequestError,
    invalid_arguments,
)


@dataclass
class Invocation:
    """
    One method call (or response): name, arguments and method call id.
    """

    name: str
    arguments: dict
    call_id: str

    def as_json(self):
        return [self.name, self.arguments, self.call_id]


@dataclass
class Request:
    """
    A decoded, checked JMAP request.

    @ivar created_ids: the client's creation id map, or C{None} when the
        request had none (then the response has none either).
    """

    using: tuple
    calls: list
    created_ids: dict = None


class _DuplicateMember(ValueError):
    """An object names one member twice: not I-JSON."""


def _object_without_duplicates(pairs):
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateMember(f"the member {name!r} appears twice in one object")
            seen.add(name)
    return result


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


# I-JSON (RFC 7493): numbers an IEEE double holds exactly, text without lone
# surrogates. Anything else would fail later, when the response is encoded.
_SAFE_INTEGER = 2**53 - 1
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _integer(text):
    value = int(text)
    if not -_SAFE_INTEGER <= value <= _SAFE_INTEGER:
        raise ValueError(f"{text} is beyond the integers I-JSON allows")
    return value


def _number(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond the numbers I-JSON allows")
    return value


# Opening brackets as +1, closing ones as -1 (signed bytes), anything else
# dropped: what is left of a body outside its strings is its nesting.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[{]}"))
DEFAULT_MAX_DEPTH = 64


def _outside_strings(text):
    # Once escaped backslashes and quotes are gone, quotes open and close
    # strings in turn: what is left between them is the JSON structure.
    if b"\\" in text:
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(text.split(b'"')[::2])


def nesting_depth(body):
    """
    @return: how deeply arrays and objects nest in C{body}, counted on the
        raw bytes outside strings (so before anything is decoded, at C
        speed: a hostile body is refused before a parser recurses on it).
    """
    return _depth(_outside_strings(body))


def _depth(structure):
    return max(accumulate(array("b", structure.translate(_BRACKETS, _NOT_BRACKETS))), default=0)


def _check_depth(structure, max_depth):
    depth = _depth(structure)
    if depth > max_depth:
        raise RequestError(
            NOT_JSON,
            f"the body nests {depth} levels deep; the server takes at most {max_depth}",
        )


def decode_json(body, max_depth=DEFAULT_MAX_DEPTH):
    """
    Decode a request body as I-JSON, no deeper than C{max_depth} levels.

    orjson decodes; it keeps the last of repeated member names and takes
    integers past 2**53 silently, so two cheap counts (member names in the
    body and in orjson's own encoding of what it decoded, which also
    refuses those integers) tell whether it saw the body exactly as
    I-JSON reads it. Anything it refused or may have read differently is
    decoded again by the exact decoder, whose error says what is wrong.
    Past a few kilobytes the checks cost as much as they save (escapes
    make them slower), so large bodies go to the exact decoder at once.

    @raise RequestError: C{notJSON}, saying where the body stopped making
        sense, or how deep it nests.
    """
    structure = _outside_strings(body)
    _check_depth(structure, max_depth)
    if len(body) > _FAST_DECODE_LIMIT:
        return _decode_exactly(body)
    try:
        document = orjson.loads(body)
        canonical = orjson.dumps(document, option=orjson.OPT_STRICT_INTEGER)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return _decode_exactly(body)
    if _LONG_NUMBER in body.translate(_DIGITS_AS_ZERO) or structure.count(b":") != _member_count(
        canonical
    ):
        return _decode_exactly(body)
    return document


_FAST_DECODE_LIMIT = 16 * 1024
# orjson turns integers past 64 bits into doubles: 19 digits in a row send
# a body to the exact decoder (no I-JSON integer has that many).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def _member_count(text):
    # text is valid JSON: outside strings, every ':' follows a member name.
    return _outside_strings(text).count(b":")


# The exact reading. Integers are checked afterwards by orjson (in C) rather
# than by a Python call per number; only a body that fails that check is
# read again with the per-number check, whose error names the integer.
_EXACT = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_refuse_constant,
    parse_float=_number,
)
_EXACT_NAMING_INTEGERS = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_refuse_constant,
    parse_float=_number,
    parse_int=_integer,
)


def _decode_exactly(body):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(NOT_JSON, f"the body is not UTF-8 (byte {error.start})") from None
    document = _read(_EXACT, text)
    try:
        orjson.dumps(document, option=orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        # An integer past 2**53 (or nesting deeper than orjson writes).
        document = _read(_EXACT_NAMING_INTEGERS, text)
    if "\\u" in text and _has_lone_surrogate(document):
        raise RequestError(NOT_JSON, "not I-JSON: a string holds a lone surrogate")
    return document


def _read(decoder, text):
    try:
        return decoder.decode(text)
    except _DuplicateMember as error:
        raise RequestError(NOT_JSON, f"not I-JSON: {error}") from None
    except json.JSONDecodeError as error:
        raise RequestError(
            NOT_JSON, f"not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except (ValueError, RecursionError) as error:
        raise RequestError(NOT_JSON, f"not JSON: {error}") from None


def _has_lone_surrogate(value):
    # Escapes are the only way one gets in: the body itself is valid UTF-8.
    if isinstance(value, str):
        return _LONE_SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    return False


def _not_request(detail):
    return RequestError(NOT_REQUEST, detail)


def _check_invocation(position, value):
    if not isinstance(value, list) or len(value) != 3:
        raise _not_request(f"methodCalls[{position}] is not an array of 3 items")
    name, arguments, call_id = value
    if not isinstance(name, str):
        raise _not_request(f"methodCalls[{position}][0] (the method name) is not a string")
    if not isinstance(arguments, dict):
        raise _not_request(f"methodCalls[{position}][1] (the arguments) is not an object")
    if not isinstance(call_id, str):
        raise _not_request(f"methodCalls[{position}][2] (the method call id) is not a string")
    return Invocation(name, arguments, call_id)


def parse_request(body, capabilities, max_calls, max_depth=DEFAULT_MAX_DEPTH):
    """
    Decode and check a request body.

    @param capabilities: the capability URIs the server supports.
    @param max_calls: the maxCallsInRequest limit.
    @param max_depth: the most levels of nesting taken (max-json-depth).
    @return: a L{Request}.
    @raise RequestError: the request is refused as a whole.
    """
    document = decode_json(body, max_depth)
    if not isinstance(document, dict):
        raise _not_request("the request is not a JSON object")
    using = document.get("using")
    if not isinstance(using, list) or not all(isinstance(uri, str) for uri in using):
        raise _not_request("'using' must be an array of capability strings")
    calls = document.get("methodCalls")
    if not isinstance(calls, list):
        raise _not_request("'methodCalls' must be an array of invocations")
    created_ids = document.get("createdIds")
    if created_ids is not None and not (
        isinstance(created_ids, dict) and all(isinstance(v, str) for v in created_ids.values())
    ):
        raise _not_request("'createdIds' must map creation ids to ids")
    unknown = [uri for uri in using if uri not in capabilities]
    if unknown:
        raise RequestError(
            UNKNOWN_CAPABILITY, f"the server does not support the capability {unknown[0]!r}"
        )
    if len(calls) > max_calls:
        raise RequestError(
            LIMIT,
            f"the request has {len(calls)} method calls; the server takes at most {max_calls}",
            limit="maxCallsInRequest",
        )
    invocations = [_check_invocation(position, call) for position, call in enumerate(calls)]
    return Request(tuple(using), invocations, None if created_ids is None else dict(created_ids))


def resolve_references(arguments, responses):
    """
    Replace each C{#name} argument by the value its ResultReference points
    at in the responses of earlier calls.

    @param responses: the L{Invocation}s answered so far in this request.
    @return: the arguments with references resolved (a new dict when any
        were present).
    @raise MethodError: C{invalidArguments} when an argument is given both
        plain and referenced or a reference is malformed,
        C{invalidResultReference} when one does not resolve.
    """
    for name in arguments:
        if name[:1] == "#":
            break
    else:
        return arguments
    resolved = {}
    for name, value in arguments.items():
        if not name.startswith("#"):
            resolved[name] = value
            continue
        plain = name[1:]
        if plain in arguments:
            raise invalid_arguments(f"the argument {plain!r} is given both plain and as #{plain}")
        resolved[plain] = _resolve(plain, value, responses)
    return resolved


def _resolve(argument, reference, responses):
    if not isinstance(reference, dict) or not all(
        isinstance(reference.get(member), str) for member in ("resultOf", "name", "path")
    ):
        raise invalid_arguments(
            f"#{argument} must be a ResultReference with string resultOf, name and path"
        )
    source = next((r for r in responses if r.call_id == reference["resultOf"]), None)
    if source is None:
        raise _unresolved(argument, f"no earlier call has the id {reference['resultOf']!r}")
    if source.name != reference["name"]:
        raise _unresolved(
            argument, f"call {source.call_id!r} answered {source.name!r}, not {reference['name']!r}"
        )
    try:
        return evaluate_pointer(source.arguments, reference["path"])
    except LookupError as error:
        raise _unresolved(argument, str(error)) from None


def _unresolved(argument, why):
    return MethodError(INVALID_RESULT_REFERENCE, f"#{argument} does not resolve: {why}")


def evaluate_pointer(document, path):
    """
    Evaluate a JSON Pointer (RFC 6901) with JMAP's C{*} token, which maps
    the rest of the pointer over an array and flattens arrays it gets back.

    @raise LookupError: the pointer names nothing in C{document}.
    """
    if path == "":
        return document
    if not path.startswith("/"):
        raise LookupError(f"the path {path!r} does not start with '/'")
    tokens = [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]
    return _walk(document, tokens, path)


def _walk(value, tokens, path):
    for position, token in enumerate(tokens):
        if isinstance(value, list) and token == "*":
            results = []
            for item in value:
                found = _walk(item, tokens[position + 1 :], path)
                if isinstance(found, list):
                    results.extend(found)
                else:
                    results.append(found)
            return results
        value = _step(value, token, path)
    return value


def _step(value, token, path):
    if isinstance(value, dict):
        if token not in value:
            raise LookupError(f"{path!r}: no member {token!r}")
        return value[token]
    if isinstance(value, list):
        if not token.isdigit() or (token != "0" and token.startswith("0")):
            raise LookupError(f"{path!r}: {token!r} is not an array index")
        index = int(token)
        if index >= len(value):
            raise LookupError(f"{path!r}: index {index} is past the end of the array")
        return value[index]
    raise LookupError(f"{path!r}: cannot go into a {type(value).__name__} with {token!r}")
