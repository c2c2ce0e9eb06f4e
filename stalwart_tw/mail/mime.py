"""
Parsing and building of Internet messages for JMAP Mail (RFC 8621 section 4).

L{parse} scans a message once and returns a L{MessageView}. The scan keeps,
for every MIME part, the byte offsets of its header block and body inside
the raw message together with the few facts the Email object needs (type,
charset, disposition, name, decoded size ...). That plain-data I{layout} is
stored beside the message (msgpack), so that later C{MessageView(raw,
layout)} answers every Email property by slicing the raw bytes, without
scanning the MIME structure again.

Choices made where RFC 8621 leaves room (a careful user's expectations):

 - Parsing never fails. Garbage becomes a single text/plain part; a
   multipart without a boundary, or whose boundary never occurs, is read as
   text/plain; a missing final boundary ends the last part at the end of its
   parent; a first line that is not a header field starts the body. Nesting
   deeper than L{MAX_DEPTH} multiparts, or more than L{MAX_PARTS} parts, is
   kept as one opaque application/octet-stream part.
 - A line "--boundary" is a delimiter only when it is followed by "--",
   white space or the end of the line, and the line break before it belongs
   to the delimiter (RFC 2046 section 5.1.1).
 - message/* parts are leaves: an attached message is read with
   C{parse(view.part_content(part_id))}.
 - When a header field is repeated, the MIME facts come from the last one,
   as header:{name} does.
 - Raw header octets are read as UTF-8, each octet that is not part of a
   UTF-8 sequence as Latin-1 (a heuristic RFC 8621 4.1.2.1 allows); NULs
   are dropped. asText removes only the white space at the start of the
   value (4.1.2.2), not at its end.
 - Body text in an unknown charset is read as UTF-8 with U+FFFD and flagged
   isEncodingProblem; us-ascii text with 8-bit octets is read as UTF-8, or
   as Windows-1252 (flagged) when it is not UTF-8; ISO-8859-1 is read as
   Windows-1252. An unknown Content-Transfer-Encoding leaves the octets as
   they are and flags isEncodingProblem. Quoted-printable loses unencoded
   trailing white space (RFC 2045 6.7).
 - Encoded words (RFC 2047) are decoded when they stand between white space,
   the ends of the value or other encoded words; adjacent encoded words of
   one charset are joined before decoding, so a character split between
   them survives. They are also decoded inside quoted display names and
   file names, as mail programs expect.
 - asMessageIds accepts a single bare id containing "@" (common in the
   wild); asDate gives "Z" for +0000, -0000 and unknown zones.
 - hasAttachment is true when some part of attachments is not
   "Content-Disposition: inline" (the RFC's SHOULD, nothing more).
 - preview is the first non-empty text part of textBody (HTML converted to
   text), white space collapsed, at most 256 characters.
 - build() writes UTF-8 text parts as 7bit, quoted-printable or base64;
   blobs as 7bit when already 7-bit clean with CRLF lines, else base64
   (message/* as 8bit rather than base64, per RFC 2046 5.2.1); non-ASCII
   header text as RFC 2047 B words and file names as RFC 2231 parameters.
   Attachments without a disposition get "attachment", or "inline" when
   they have a cid and go into a multipart/related with the HTML body.
"""

import base64
import binascii
import codecs
import datetime
import html
import re
import secrets
import unicodedata
from urllib.parse import unquote_to_bytes

LAYOUT_VERSION = 1

MAX_DEPTH = 50
MAX_PARTS = 5000
PREVIEW_CHARS = 256

DEFAULT_BODY_PROPERTIES = [
    "partId", "blobId", "size", "name", "type", "charset",
    "disposition", "cid", "language", "location",
]
BODY_PART_PROPERTIES = [
    "partId", "blobId", "size", "headers", "name", "type", "charset",
    "disposition", "cid", "language", "location", "subParts",
]
HEADER_FORMS = ("Raw", "Text", "Addresses", "GroupedAddresses", "MessageIds", "Date", "URLs")

# Positions in a layout part record (a list, to keep the stored layout small).
_HS = 0        # offset of the part's header block
_BS = 1        # offset of its body (just after the blank line)
_BE = 2        # end of its body (the line break before a delimiter excluded)
_TYPE = 3      # media type, lower case
_CHARSET = 4   # charset parameter, "us-ascii" for text/* without one, else None
_DISP = 5      # disposition, lower case, or None
_NAME = 6      # decoded file name or None
_CID = 7       # Content-ID without angle brackets, or None
_LANG = 8      # list of Content-Language tags, or None
_LOC = 9       # Content-Location, or None
_ENC = 10      # Content-Transfer-Encoding, lower case, or None
_SIZE = 11     # octets after transfer decoding (leaves); None for multiparts
_NSUB = 12     # number of children (multiparts); None for leaves
_RECORD_LENGTH = 13


# ---------------------------------------------------------------------------
# Small decoders


def _latin1_fallback(error):
    return error.object[error.start:error.end].decode("latin-1"), error.end


codecs.register_error("stalwart-latin1-fallback", _latin1_fallback)


def _header_text(data):
    """
    Decode raw header octets: NULs dropped, UTF-8, and each octet that is
    not part of a UTF-8 sequence as Latin-1.
    """
    if b"\x00" in data:
        data = data.replace(b"\x00", b"")
    if data.isascii():
        return data.decode("ascii")
    return data.decode("utf-8", "stalwart-latin1-fallback")


def _unfold(value):
    return value.replace("\r\n", "").replace("\n", "").replace("\r", "")


_B64_KEEP = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_B64_JUNK = bytes(c for c in range(256) if c not in _B64_KEEP)
_B64_CHUNK = re.compile(rb"[^=]+=*")


def _b64_quantum(data):
    data = data.rstrip(b"=")
    rest = len(data) % 4
    if rest == 1:
        data = data[:-1]
    elif rest:
        data += b"=" * (4 - rest)
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        return b""


def _b64decode(data):
    """
    Lenient base64: junk ignored, padding repaired, padded chunks joined.
    """
    clean = data.translate(None, _B64_JUNK)
    stripped = clean.rstrip(b"=")
    if b"=" in stripped:
        return b"".join(_b64_quantum(chunk) for chunk in _B64_CHUNK.findall(clean))
    return _b64_quantum(stripped)


_QP_TRAILING_SPACE = re.compile(rb"[ \t]+(?=\r?\n|\Z)")
_KNOWN_ENCODINGS = frozenset([None, "7bit", "8bit", "binary", "base64", "quoted-printable"])


def _transfer_decode(data, encoding):
    if encoding == "base64":
        return _b64decode(data)
    if encoding == "quoted-printable":
        # RFC 2045 6.7 (3): trailing white space was added in transport.
        if (b" \n" in data or b"\t\n" in data or b" \r\n" in data or b"\t\r\n" in data
                or data.endswith((b" ", b"\t"))):
            data = _QP_TRAILING_SPACE.sub(b"", data)
        return binascii.a2b_qp(data)
    return data


_LATIN1_NAMES = frozenset(
    ["iso-8859-1", "iso8859-1", "iso_8859-1", "latin1", "latin-1", "l1", "cp819", "ibm819"]
)
_ASCII_NAMES = frozenset(["us-ascii", "ascii", "us_ascii", "ansi_x3.4-1968", "iso646-us", "646"])
# Labels whose usual content is a superset of what they name (the HTML
# standard makes the same substitutions).
_CHARSET_SUPERSETS = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949", "euc-kr": "cp949",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "tis-620": "cp874", "iso-8859-11": "cp874",
    "iso-8859-9": "cp1254",
    "utf8": "utf-8",
}


def _decode_charset(data, charset, final=True):
    """
    Decode body octets in a charset.

    @param final: C{False} when C{data} is only a prefix: an incomplete
        character at its end is left out rather than reported.
    @return: C{(text, is_encoding_problem)}
    """
    name = (charset or "us-ascii").strip().strip("\"'").lower()
    if name in _ASCII_NAMES:
        if data.isascii():
            return data.decode("ascii"), False
        text, problem = _decode_with(data, "utf-8", final)
        if not problem:
            return text, False
        return _decode_with(data, "cp1252", final)[0], True
    if name in _LATIN1_NAMES:
        text, problem = _decode_with(data, "cp1252", final)
        if problem:
            text = data.decode("latin-1")
        return text, False
    name = _CHARSET_SUPERSETS.get(name, name)
    try:
        return _decode_with(data, name, final)
    except (LookupError, ValueError, TypeError):
        text = _decode_with(data, "utf-8", final)[0]
        return text, True


def _decode_with(data, codec, final):
    """
    @return: C{(text, had_errors)}; raises LookupError for unknown codecs.
    """
    decoder_class = codecs.getincrementaldecoder(codec)
    if not getattr(codecs.lookup(codec), "_is_text_encoding", True):
        raise LookupError(codec)
    try:
        text = decoder_class("strict").decode(data, final)
        problem = False
    except UnicodeDecodeError:
        text = decoder_class("replace").decode(data, final)
        problem = True
    except Exception:
        # Some codecs raise other errors on hostile input.
        text = data.decode("utf-8", "replace")
        problem = True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
        problem = True
    return text, problem


# ---------------------------------------------------------------------------
# Encoded words (RFC 2047)

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_SPACE_SPLIT = re.compile(r"([ \t\r\n]+)")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_Q_HEX = re.compile(rb"=([0-9A-Fa-f]{2})")


def _word_bytes(encoding, text):
    if encoding in "bB":
        return _b64decode(text.encode("ascii", "ignore"))
    data = text.encode("utf-8").replace(b"_", b" ")
    return _Q_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def _word_text(charset, data):
    name = charset.split("*", 1)[0].strip().lower()
    if name in _ASCII_NAMES:
        name = "utf-8"
    elif name in _LATIN1_NAMES:
        name = "cp1252"
    name = _CHARSET_SUPERSETS.get(name, name)
    try:
        codecs.lookup(name)
        text = _decode_with(data, name, True)[0]
    except (LookupError, ValueError, TypeError):
        return None
    if name == "cp1252" and "\ufffd" in text:
        text = data.decode("latin-1")
    return _CONTROL.sub("", text)


def _word_run(token):
    """
    @return: the C{[charset, encoding, text]} triples a token is made of, or
        C{None} when the token is not entirely encoded words.
    """
    words = []
    pos = 0
    for match in _ENCODED_WORD.finditer(token):
        if match.start() != pos:
            return None
        words.append(match.groups())
        pos = match.end()
    if pos != len(token) or not words:
        return None
    return words


def _segments(text, anywhere):
    """
    Split a header value into C{("w", charset, encoding, text)} encoded
    words and C{("t", text)} runs. Unless C{anywhere}, words count only
    where RFC 2047 places them: between white space, the ends of the value
    or other words.
    """
    if anywhere:
        pos = 0
        for match in _ENCODED_WORD.finditer(text):
            if match.start() > pos:
                yield ("t", text[pos:match.start()])
            yield ("w",) + match.groups()
            pos = match.end()
        if pos < len(text):
            yield ("t", text[pos:])
        return
    for index, piece in enumerate(_SPACE_SPLIT.split(text)):
        run = _word_run(piece) if index % 2 == 0 and "=?" in piece else None
        if run is None:
            yield ("t", piece)
        else:
            for word in run:
                yield ("w",) + word


def decode_words(text, anywhere=False):
    """
    Decode the RFC 2047 encoded words of a header value.

    Words in unknown charsets stay as they are; white space between two
    decoded words is dropped; adjacent words of one charset are decoded
    together.

    @param anywhere: also decode words glued to other text (for parameter
        values, where encoded words are a common abuse anyway).
    """
    if "=?" not in text:
        return text
    out = []
    pending = []        # [charset, bytes] of the current run of decoded words
    pending_space = ""  # white space seen since the last decoded word
    for segment in _segments(text, anywhere):
        if segment[0] == "w":
            _, charset, encoding, word = segment
            if _word_text(charset, b"") is not None:
                data = _word_bytes(encoding, word)
                key = charset.split("*", 1)[0].lower()
                if pending and pending[-1][0] == key:
                    pending[-1][1] += data
                else:
                    pending.append([key, bytearray(data)])
                pending_space = ""
                continue
            segment = ("t", "=?%s?%s?%s?=" % (charset, encoding, word))
        piece = segment[1]
        if pending and not piece.strip(" \t\r\n"):
            pending_space += piece
            continue
        for charset, data in pending:
            out.append(_word_text(charset, bytes(data)))
        if pending:
            out.append(pending_space)
        pending, pending_space = [], ""
        out.append(piece)
    for charset, data in pending:
        out.append(_word_text(charset, bytes(data)))
    out.append(pending_space)
    return "".join(out)


def _nfc(text):
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)


# ---------------------------------------------------------------------------
# Structured header values


def _strip_comments(value):
    """
    Remove (nested) comments outside quoted strings.
    """
    if "(" not in value:
        return value
    out = []
    depth = 0
    quoted = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\" and (quoted or depth):
            if not depth:
                out.append(value[i:i + 2])
            i += 2
            continue
        if quoted:
            if c == '"':
                quoted = False
            out.append(c)
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
            if not depth:
                out.append(" ")
        elif not depth:
            if c == '"':
                quoted = True
            out.append(c)
        i += 1
    return "".join(out)


def _split_params(value):
    """
    Split "a; b=c; d" at the semicolons outside quoted strings and comments.
    """
    if '"' not in value and "(" not in value:
        return value.split(";")
    value = _strip_comments(value)
    pieces = []
    start = 0
    quoted = False
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ";" and not quoted:
            pieces.append(value[start:i])
            start = i + 1
        i += 1
    pieces.append(value[start:])
    return pieces


def _unquote(value):
    value = value.strip()
    if len(value) >= 1 and value[0] == '"':
        end = len(value) - 1 if len(value) > 1 and value[-1] == '"' else len(value)
        return value[1:end].replace("\\\\", "\x00").replace('\\"', '"').replace("\x00", "\\")
    return value


def _parse_params(value):
    """
    Parse a Content-Type or Content-Disposition value.

    @return: C{(main_value, {name: value})}, RFC 2231 continuations and
        charsets applied.
    """
    pieces = _split_params(value)
    main = pieces[0]
    simple = {}
    extended = {}
    for piece in pieces[1:]:
        name, equals, raw_value = piece.partition("=")
        if not equals:
            continue
        name = name.strip().lower()
        if not name:
            continue
        if "*" in name:
            base, _, rest = name.partition("*")
            if rest == "":
                extended.setdefault(base, {})[0] = (raw_value.strip(), True)
            else:
                marked = rest.endswith("*")
                number = rest.rstrip("*")
                if number.isdigit() and len(number) < 4:
                    extended.setdefault(base, {})[int(number)] = (
                        raw_value.strip() if marked else _unquote(raw_value),
                        marked,
                    )
        elif name not in simple:
            simple[name] = _unquote(raw_value)
    for base, segments in extended.items():
        joined = _join_rfc2231(segments)
        if joined is not None:
            simple[base] = joined
    return main, simple


def _join_rfc2231(segments):
    charset = None
    data = []
    index = 0
    while index in segments:
        text, marked = segments[index]
        if marked:
            text = _unquote(text)
            if index == 0 and text.count("'") >= 2:
                charset, _, rest = text.partition("'")
                _, _, text = rest.partition("'")
            data.append(unquote_to_bytes(text))
        else:
            data.append(text.encode("utf-8"))
        index += 1
    if not data:
        return None
    octets = b"".join(data)
    if charset:
        return _decode_charset(octets, charset)[0]
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        return octets.decode("latin-1")


_TYPE_SYNTAX = re.compile(r"[a-z0-9!#$%&'*+.^_`{|}~-]+/[a-z0-9!#$%&'*+.^_`{|}~-]+")
_WHITE = re.compile(r"\s+")


def _media_type(value):
    main = _WHITE.sub("", value).lower()
    return main if _TYPE_SYNTAX.fullmatch(main) else None


# ---------------------------------------------------------------------------
# Addresses (RFC 5322 section 3.4, best effort)

_ADDRESS_TOKEN = re.compile(
    r'(?P<w>\s+)|(?P<q>"(?:[^"\\]|\\.)*(?:"|$))|(?P<d>\[[^\]]*\]?)|(?P<s>[,:;<>@])'
    r'|(?P<c>\()|(?P<a>[^\s",:;<>@(\[]+)',
    re.S,
)


def _read_comment(value, i):
    depth = 0
    buf = []
    n = len(value)
    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            buf.append(value[i + 1])
            i += 2
            continue
        if c == "(":
            depth += 1
            if depth > 1:
                buf.append(c)
        elif c == ")":
            depth -= 1
            if not depth:
                return "".join(buf), i + 1
            buf.append(c)
        else:
            buf.append(c)
        i += 1
    return "".join(buf), n


def _address_tokens(value):
    tokens = []
    i = 0
    n = len(value)
    while i < n:
        match = _ADDRESS_TOKEN.match(value, i)
        kind = match.lastgroup
        if kind == "c":
            text, i = _read_comment(value, i)
            tokens.append(("c", text))
            continue
        text = match.group()
        if kind == "q":
            end = len(text) - 1 if len(text) > 1 and text.endswith('"') else len(text)
            text = re.sub(r"\\(.)", r"\1", text[1:end], flags=re.S)
        tokens.append((kind, text))
        i = match.end()
    return tokens


def _phrase(tokens):
    parts = []
    for kind, text in tokens:
        if kind == "w":
            if parts and parts[-1] != " ":
                parts.append(" ")
        elif kind != "c":
            parts.append(text)
    name = _nfc(decode_words("".join(parts)).strip())
    return name or None


def _addr_text(tokens):
    parts = []
    for kind, text in tokens:
        if kind == "q":
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif kind not in ("w", "c"):
            parts.append(text)
    return "".join(parts)


def _mailbox(phrase_tokens, angle, comments):
    """
    @return: an EmailAddress dict, or C{None} for an empty mailbox.
    """
    comment_name = None
    if comments:
        comment_name = _nfc(decode_words(" ".join(c.strip() for c in comments)).strip()) or None
    if angle is not None:
        route = [i for i, (kind, text) in enumerate(angle) if kind == "s" and text == ":"]
        if route:
            angle = angle[route[-1] + 1:]
        email = _addr_text(angle).strip()
        name = _phrase(phrase_tokens) or comment_name
        if not email and name is None:
            return None
        return {"name": name, "email": email}
    words = []
    current = []
    for token in phrase_tokens:
        if token[0] == "w":
            if current:
                words.append(current)
                current = []
        elif token[0] != "c":
            current.append(token)
    if current:
        words.append(current)
    if not words:
        return None
    texts = [_addr_text(word) for word in words]
    with_at = [i for i, text in enumerate(texts) if "@" in text.strip("@")]
    if len(with_at) == 1 and len(words) > 1:
        at = with_at[0]
        name = _phrase([t for i, w in enumerate(words) if i != at for t in w + [("w", " ")]])
        return {"name": name or comment_name, "email": texts[at]}
    if any("@" in text for text in texts):
        return {"name": comment_name, "email": "".join(texts)}
    return {"name": comment_name, "email": " ".join(texts)}


def _parse_grouped(value):
    """
    @return: a list of EmailAddressGroup dicts (RFC 8621 4.1.2.4).
    """
    tokens = _address_tokens(_unfold(value))
    groups = []
    group = None        # the named group being read
    loose = None        # the current run of mailboxes outside any group
    phrase = []
    comments = []
    angle = None

    def flush():
        nonlocal phrase, comments, angle, loose
        address = _mailbox(phrase, angle, comments)
        phrase, comments, angle = [], [], None
        if address is None:
            return
        if group is not None:
            group["addresses"].append(address)
        else:
            if loose is None:
                loose = {"name": None, "addresses": []}
                groups.append(loose)
            loose["addresses"].append(address)

    i = 0
    n = len(tokens)
    while i < n:
        kind, text = tokens[i]
        i += 1
        if kind == "c":
            comments.append(text)
        elif kind != "s":
            phrase.append((kind, text))
        elif text == ",":
            flush()
        elif text == ";":
            flush()
            group = None
        elif text == ":" and group is None:
            group = {"name": _phrase(phrase), "addresses": []}
            groups.append(group)
            loose = None
            phrase, comments = [], []
        elif text == "<":
            angle = []
            while i < n:
                kind, text = tokens[i]
                if kind == "s" and text == ">":
                    i += 1
                    break
                if kind == "s" and text in ",<" and any(t == "@" for _, t in angle) \
                        and not any(t == ":" for _, t in angle):
                    break
                angle.append((kind, text))
                i += 1
        elif text == ">":
            continue
        else:
            phrase.append((kind, text))
    flush()
    return groups


def _parse_addresses(value):
    return [address for group in _parse_grouped(value) for address in group["addresses"]]


# ---------------------------------------------------------------------------
# Message ids, URLs, dates

_ANGLED = re.compile(r"<([^<>]*)>")


def _parse_message_ids(value):
    value = _strip_comments(_unfold(value))
    found = _ANGLED.findall(value)
    if found:
        ids = [_WHITE.sub("", item) for item in found]
        ids = [item for item in ids if item]
        return ids or None
    words = value.split()
    if len(words) == 1 and "@" in words[0] and "<" not in words[0] and ">" not in words[0]:
        return [words[0]]
    return None


def _parse_urls(value):
    found = _ANGLED.findall(_strip_comments(_unfold(value)))
    urls = [_WHITE.sub("", item) for item in found]
    urls = [url for url in urls if url]
    return urls or None


_MONTHS = {
    name: number
    for number, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_ZONES = {
    "ut": 0, "utc": 0, "gmt": 0, "z": 0,
    "est": -300, "edt": -240, "cst": -360, "cdt": -300,
    "mst": -420, "mdt": -360, "pst": -480, "pdt": -420,
}
_DATE = re.compile(
    r"\s*(?:[A-Za-z]+\.?\s*,?\s*)?"
    r"(\d{1,2})\s*[-\s]\s*([A-Za-z]+)\.?\s*[-\s]\s*(\d{2,4})"
    r"\s+(\d{1,2})\s*:\s*(\d{1,2})(?:\s*:\s*(\d{1,2}))?(?:\.\d+)?"
    r"\s*(?:([+-])(\d{2}):?(\d{2})\b|([A-Za-z]{1,5})\b)?"
)
_ASCTIME = re.compile(
    r"\s*[A-Za-z]+\s+([A-Za-z]+)\s+(\d{1,2})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?"
    r"\s+(?:([A-Za-z]{1,5})\s+)?(\d{4})\b"
)


def _parse_date(value):
    """
    @return: the RFC 3339 form of an RFC 5322 date-time, with its offset.
    """
    value = _strip_comments(_unfold(value))
    match = _DATE.match(value)
    if match:
        day, month, year, hour, minute, second, sign, zh, zm, zone = match.groups()
    else:
        match = _ASCTIME.match(value)
        if not match:
            return None
        month, day, hour, minute, second, zone, year = match.groups()
        sign = zh = zm = None
    month = _MONTHS.get(month[:3].lower())
    if month is None:
        return None
    digits = len(year)
    year = int(year)
    # RFC 5322 section 4.3: 00-49 are 2000-2049, other short years 19xx.
    if digits == 2 and year < 50:
        year += 2000
    elif digits <= 3:
        year += 1900
    if sign:
        offset = int(zh) * 60 + int(zm)
        if int(zm) >= 60 or int(zh) >= 24:
            return None
        if sign == "-":
            offset = -offset
    else:
        offset = _ZONES.get((zone or "").lower(), 0)
    try:
        moment = datetime.datetime(
            year, month, int(day), int(hour), int(minute), min(int(second or 0), 59)
        )
    except ValueError:
        return None
    return _rfc3339(moment, offset)


def _rfc3339(moment, offset_minutes):
    text = "%04d-%02d-%02dT%02d:%02d:%02d" % (
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second
    )
    if not offset_minutes:
        return text + "Z"
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return "%s%s%02d:%02d" % (text, sign, hours, minutes)


# ---------------------------------------------------------------------------
# Which header forms apply to which fields (RFC 8621 4.1.2)

_RFC5322_FIELDS = frozenset([
    "date", "from", "sender", "reply-to", "to", "cc", "bcc", "message-id",
    "in-reply-to", "references", "subject", "comments", "keywords",
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc",
    "resent-bcc", "resent-message-id", "return-path", "received",
])
_RFC2369_FIELDS = frozenset([
    "list-help", "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive",
])
_ADDRESS_FIELDS = frozenset([
    "from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-sender",
    "resent-reply-to", "resent-to", "resent-cc", "resent-bcc",
])
_FORM_FIELDS = {
    "Text": frozenset(["subject", "comments", "keywords", "list-id"]),
    "Addresses": _ADDRESS_FIELDS,
    "GroupedAddresses": _ADDRESS_FIELDS,
    "MessageIds": frozenset(["message-id", "in-reply-to", "references", "resent-message-id"]),
    "Date": frozenset(["date", "resent-date"]),
    "URLs": _RFC2369_FIELDS,
}
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")


def check_form(name, form):
    """
    Raise C{ValueError} unless the header form may be used for the field.
    """
    if form == "Raw":
        return
    allowed = _FORM_FIELDS.get(form)
    if allowed is None:
        raise ValueError("unknown header form %r" % (form,))
    lower = name.lower()
    if lower in allowed or (lower not in _RFC5322_FIELDS and lower not in _RFC2369_FIELDS):
        return
    raise ValueError("header %s cannot be fetched or set as %s" % (name, form))


def parse_header_property(prop):
    """
    Split a "header:{name}[:as{form}][:all]" property name.

    @return: C{(name, form, all)}
    @raise ValueError: for a malformed property or a form not allowed for
        the field.
    """
    if not isinstance(prop, str) or not prop.startswith("header:"):
        raise ValueError("not a header property: %r" % (prop,))
    pieces = prop[7:].split(":")
    name = pieces[0]
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError("bad header field name in %r" % (prop,))
    rest = pieces[1:]
    form = "Raw"
    if rest and rest[0].startswith("as"):
        form = rest.pop(0)[2:]
        if form not in HEADER_FORMS:
            raise ValueError("unknown header form in %r" % (prop,))
    is_all = False
    if rest and rest[0] == "all":
        rest.pop(0)
        is_all = True
    if rest:
        raise ValueError("bad header property %r" % (prop,))
    check_form(name, form)
    return name, form, is_all


def _form_value(raw_value, form):
    if form == "Raw":
        return raw_value
    if form == "Text":
        # RFC 8621 4.1.2.2: only white space at the start is removed.
        return _nfc(decode_words(_unfold(raw_value).lstrip(" \t")))
    if form == "Addresses":
        return _parse_addresses(raw_value)
    if form == "GroupedAddresses":
        return _parse_grouped(raw_value)
    if form == "MessageIds":
        return _parse_message_ids(raw_value)
    if form == "Date":
        return _parse_date(raw_value)
    return _parse_urls(raw_value)


# ---------------------------------------------------------------------------
# The structural scanner

_FIELD_LINE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def _scan_headers(raw, start, end):
    """
    Read the header block at C{raw[start:end]}.

    @return: C{(fields, body_start)}, fields as C{[name, value_start,
        value_end]} (the value without its final line break).
    """
    fields = []
    pos = start
    while pos < end:
        newline = raw.find(b"\n", pos, end)
        if newline < 0:
            next_line = content_end = end
        else:
            next_line = newline + 1
            content_end = newline
        if content_end > pos and raw[content_end - 1] == 13:
            content_end -= 1
        if content_end == pos:
            return fields, next_line
        first = raw[pos]
        if first == 32 or first == 9:
            if not fields:
                return fields, pos
            fields[-1][2] = content_end
        else:
            match = _FIELD_LINE.match(raw, pos, content_end)
            if match is None:
                return fields, pos
            fields.append([match.group(1), match.end(), content_end])
        pos = next_line
    return fields, end


def _split_multipart(raw, start, end, boundary):
    """
    @return: the C{(start, end)} spans of the body parts of a multipart body,
        or C{None} when no delimiter line occurs.
    """
    delimiter = b"--" + boundary
    size = len(delimiter)
    spans = []
    part_start = None
    pos = start
    while True:
        at = raw.find(delimiter, pos, end)
        if at < 0:
            break
        pos = at + 1
        if at != start and raw[at - 1] != 10:
            continue
        after = at + size
        closing = raw.startswith(b"--", after) and after + 2 <= end
        k = after + 2 if closing else after
        while k < end and raw[k] in (32, 9):
            k += 1
        if k < end and raw[k] != 10 and not (raw[k] == 13 and (k + 1 >= end or raw[k + 1] == 10)):
            if not closing:
                continue
        line_end = raw.find(b"\n", k, end)
        line_end = end if line_end < 0 else line_end + 1
        if part_start is not None:
            part_end = at
            if part_end - 1 >= part_start and raw[part_end - 1] == 10:
                part_end -= 1
                if part_end - 1 >= part_start and raw[part_end - 1] == 13:
                    part_end -= 1
            spans.append((part_start, part_end))
        if closing:
            return spans
        part_start = line_end
        pos = line_end
        if len(spans) >= MAX_PARTS:
            break
    if part_start is None:
        return None
    spans.append((part_start, end))
    return spans


def _content_info(raw, fields, default_type):
    found = {}
    for name, value_start, value_end in fields:
        if len(name) >= 10 and name[:8].lower() == b"content-":
            found[name.lower()] = (value_start, value_end)

    def value(key):
        span = found.get(key)
        return None if span is None else _header_text(raw[span[0]:span[1]])

    content_type = value(b"content-type")
    params = {}
    media = default_type
    if content_type is not None:
        main, params = _parse_params(content_type)
        media = _media_type(main)
        if media is None:
            media, params = "text/plain", {}
    charset = (params.get("charset") or "").strip() or None
    if charset is None and media.startswith("text/"):
        charset = "us-ascii"
    disposition = value(b"content-disposition")
    name = None
    if disposition is not None:
        main, disposition_params = _parse_params(disposition)
        disposition = _WHITE.sub("", main).lower() or None
        name = disposition_params.get("filename")
    if not name:
        name = params.get("name")
    if name:
        name = _nfc(decode_words(name, anywhere=True)) or None
    else:
        name = None
    encoding = value(b"content-transfer-encoding")
    if encoding is not None:
        encoding = _WHITE.sub("", _strip_comments(encoding)).lower() or None
    cid = value(b"content-id")
    if cid is not None:
        cid = _WHITE.sub("", _strip_comments(_unfold(cid)))
        if cid.startswith("<"):
            cid = cid[1:]
        if cid.endswith(">"):
            cid = cid[:-1]
        cid = cid or None
    language = value(b"content-language")
    if language is not None:
        tags = [tag.strip() for tag in _strip_comments(_unfold(language)).split(",")]
        language = [tag for tag in tags if tag] or None
    location = value(b"content-location")
    if location is not None:
        location = _WHITE.sub("", _strip_comments(_unfold(location))) or None
    return media, params, [charset, disposition, name, cid, language, location, encoding]


def _leaf_size(raw, start, end, encoding):
    if encoding == "base64" or encoding == "quoted-printable":
        return len(_transfer_decode(raw[start:end], encoding))
    return end - start


def _opaque(start, body_start, end):
    return [start, body_start, end, "application/octet-stream",
            None, None, None, None, None, None, None, end - body_start, None]


def _scan_entity(raw, start, end, default_type, depth, parts):
    fields, body_start = _scan_headers(raw, start, end)
    media, params, facts = _content_info(raw, fields, default_type)
    record = [start, body_start, end, media] + facts + [None, None]
    parts.append(record)
    if media.startswith("multipart/"):
        boundary = params.get("boundary", "")
        spans = None
        if depth >= MAX_DEPTH:
            parts[-1] = _opaque(start, body_start, end)
            return
        if boundary:
            spans = _split_multipart(raw, body_start, end, boundary.encode("utf-8", "replace"))
        if spans is not None:
            child_type = "message/rfc822" if media == "multipart/digest" else "text/plain"
            count = 0
            for span_start, span_end in spans:
                if len(parts) >= MAX_PARTS:
                    parts.append(_opaque(span_start, span_start, spans[-1][1]))
                    count += 1
                    break
                _scan_entity(raw, span_start, span_end, child_type, depth + 1, parts)
                count += 1
            record[_NSUB] = count
            return
        # No structure to be found: read the body as plain text.
        record[_TYPE] = "text/plain"
        if record[_CHARSET] is None:
            record[_CHARSET] = "us-ascii"
    record[_SIZE] = _leaf_size(raw, body_start, end, record[_ENC])


def parse(raw):
    """
    Scan a message.

    @param raw: the message octets.
    @return: a L{MessageView} of it; never raises.
    """
    raw = bytes(raw)
    try:
        layout = _scan(raw)
    except Exception:
        layout = {"v": LAYOUT_VERSION, "p": [_opaque(0, 0, len(raw))], "pv": "", "ha": True}
    return MessageView(raw, layout)


def _scan(raw):
    start = 0
    if raw.startswith(b"From "):
        # An mbox separator line, not a header field.
        newline = raw.find(b"\n")
        start = len(raw) if newline < 0 else newline + 1
    parts = []
    _scan_entity(raw, start, len(raw), "text/plain", 0, parts)
    layout = {"v": LAYOUT_VERSION, "p": parts, "pv": "", "ha": False}
    view = MessageView(raw, layout)
    layout["pv"] = view._compute_preview()
    layout["ha"] = view._compute_has_attachment()
    return layout


# ---------------------------------------------------------------------------
# HTML to text (for previews and search)

_HTML_DROP = re.compile(
    r"<(script|style|head|title|template)\b[^>]*>.*?</\1\s*>|<!--.*?(?:-->|$)", re.I | re.S
)
_HTML_ALT = re.compile(
    r"<img\b[^>]*?\b(?:alt|title)\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s>]+)[^>]*>", re.I
)
_HTML_BREAK = re.compile(
    r"<(?:br|/?p|/?div|/?tr|/?li|/?h[1-6]|/?table|/?blockquote|hr|/?ul|/?ol|/?pre)\b[^>]*>",
    re.I,
)
_HTML_TAG = re.compile(r"<[a-zA-Z/!?][^>]*>?")
_BLANK_LINES = re.compile(r"\n\s*\n\s*")
_SPACES = re.compile(r"[^\S\n]+")


def html_to_text(markup):
    """
    The text a reader sees in an HTML document: no markup, head, styles or
    scripts; image alt texts kept; block elements as line breaks.
    """
    text = _HTML_DROP.sub(" ", markup)
    text = _HTML_ALT.sub(lambda m: " " + m.group(1).strip("\"'") + " ", text)
    text = _HTML_BREAK.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    text = html.unescape(text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


# ---------------------------------------------------------------------------
# Thread keys

_SUBJECT_TRAILER = re.compile(r"(?:\s*\(fwd\))+\s*$", re.I)
_SUBJECT_LEADER = re.compile(
    r"(?:\s*\[[^\[\]]*\])*\s*(?:re|fwd?|aw|wg|sv|vs|antw|tr|rv|odp)\s*(?:\[[^\[\]]*\])?\s*:\s*",
    re.I,
)
_SUBJECT_BLOB = re.compile(r"\s*\[[^\[\]]*\]\s*")


def base_subject(subject):
    """
    The base subject of RFC 5256 section 2.1, with common non-English reply
    and forward prefixes, case-folded.
    """
    text = _WHITE.sub(" ", subject or "").strip()
    while True:
        before = text
        text = _SUBJECT_TRAILER.sub("", text)
        while True:
            match = _SUBJECT_LEADER.match(text)
            if match:
                text = text[match.end():]
                continue
            match = _SUBJECT_BLOB.match(text)
            if match and match.end() < len(text):
                text = text[match.end():]
                continue
            break
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text = text[5:-1].strip()
        if text == before:
            break
    return text.strip().casefold()


# ---------------------------------------------------------------------------
# Blob ids of parts


def part_blob_id(message_blob_id, part_id):
    """
    @return: the blob id of a part of a message.
    """
    return "%s_%s" % (message_blob_id, part_id)


def split_part_blob_id(blob_id):
    """
    @return: C{(message_blob_id, part_id)} for a part blob id, else C{None}.
    """
    if not isinstance(blob_id, str):
        return None
    message, underscore, part = blob_id.rpartition("_")
    if not underscore or not message or not part.isdigit() or not part.isascii():
        return None
    if part[0] == "0":
        return None
    return message, part


# ---------------------------------------------------------------------------
# The view


def _is_media(media):
    return media.startswith(("image/", "audio/", "video/"))


def _valid_layout(layout, size):
    try:
        if layout["v"] != LAYOUT_VERSION:
            return False
        parts = layout["p"]
        if not parts:
            return False
        for record in parts:
            if len(record) != _RECORD_LENGTH or not (
                0 <= record[_HS] <= record[_BS] <= record[_BE] <= size
            ):
                return False
        return isinstance(layout["pv"], str) and isinstance(layout["ha"], bool)
    except (KeyError, TypeError, IndexError):
        return False


def _preview_of(text):
    """
    The first L{PREVIEW_CHARS} characters of a text, white space collapsed;
    only as much of the text is read as that needs.
    """
    chunk = 1024
    while True:
        collapsed = _WHITE.sub(" ", text[:chunk]).strip()
        if len(collapsed) > PREVIEW_CHARS or chunk >= len(text):
            return collapsed[:PREVIEW_CHARS].rstrip()
        chunk *= 8


class MessageView:
    """
    The Email properties of one message, read from its octets and layout.

    @ivar layout: plain data (see L{parse}), C{{"v": version, "p": [part
        records in depth-first order], "pv": preview, "ha": hasAttachment}};
        a part record is a list indexed by the C{_HS} ... C{_NSUB} constants
        of this module.
    """

    def __init__(self, raw, layout, blob_id=None):
        """
        @param raw: the message octets.
        @param layout: what L{parse} computed for them; a layout of another
            version, or one that does not fit C{raw}, is computed again.
        @param blob_id: the blob id of the message, or C{None}.
        """
        self._raw = raw if isinstance(raw, bytes) else bytes(raw)
        if not _valid_layout(layout, len(self._raw)):
            layout = parse(self._raw).layout
        self.layout = layout
        self.blob_id = blob_id
        self._parts = layout["p"]
        self._fields_cache = {}
        self._lists_cache = None
        self._index_tree()

    def _index_tree(self):
        count = len(self._parts)
        self._children = [None] * count
        self._part_ids = [None] * count
        self._by_part_id = {}
        stack = []
        leaves = 0
        for index, record in enumerate(self._parts):
            while stack and stack[-1][1] <= 0:
                stack.pop()
            if index and not stack:
                break
            if stack:
                self._children[stack[-1][0]].append(index)
                stack[-1][1] -= 1
            if record[_NSUB] is not None:
                self._children[index] = []
                stack.append([index, record[_NSUB]])
            else:
                leaves += 1
                part_id = str(leaves)
                self._part_ids[index] = part_id
                self._by_part_id[part_id] = index

    # -- properties of the message

    @property
    def size(self):
        return len(self._raw)

    @property
    def has_attachment(self):
        return self.layout["ha"]

    @property
    def preview(self):
        return self.layout["pv"]

    # -- header fields

    def _index(self, part_id):
        if part_id is None:
            return 0
        return self._by_part_id.get(part_id)

    def _fields(self, index):
        fields = self._fields_cache.get(index)
        if fields is None:
            record = self._parts[index]
            found, _ = _scan_headers(self._raw, record[_HS], record[_BS])
            fields = [
                (name.decode("ascii"), _header_text(self._raw[start:end]))
                for name, start, end in found
            ]
            self._fields_cache[index] = fields
        return fields

    def headers(self, part_id=None):
        """
        @return: the header fields of the message, or of a part, in order,
            as C{{"name", "value"}} with the value in Raw form.
        """
        index = self._index(part_id)
        if index is None:
            return []
        return [{"name": name, "value": value} for name, value in self._fields(index)]

    def _header_at(self, index, name, form, is_all):
        lower = name.lower()
        values = [value for field, value in self._fields(index) if field.lower() == lower]
        if is_all:
            return [_form_value(value, form) for value in values]
        if not values:
            return None
        return _form_value(values[-1], form)

    def header(self, name, form="Raw", all=False, part_id=None):
        """
        @return: the value of header:{name}:as{form}[:all] of the message or
            of a part: C{None} (or C{[]}) when the field is absent.
        @raise ValueError: when the form is not allowed for the field.
        """
        check_form(name, form)
        index = self._index(part_id)
        if index is None:
            return [] if all else None
        return self._header_at(index, name, form, all)

    def convenience(self):
        """
        @return: the convenience properties of RFC 8621 4.1.3.
        """
        get = self.header
        return {
            "messageId": get("Message-ID", "MessageIds"),
            "inReplyTo": get("In-Reply-To", "MessageIds"),
            "references": get("References", "MessageIds"),
            "sender": get("Sender", "Addresses"),
            "from": get("From", "Addresses"),
            "to": get("To", "Addresses"),
            "cc": get("Cc", "Addresses"),
            "bcc": get("Bcc", "Addresses"),
            "replyTo": get("Reply-To", "Addresses"),
            "subject": get("Subject", "Text"),
            "sentAt": get("Date", "Date"),
        }

    # -- body parts

    def _part_json(self, index, properties, nested):
        record = self._parts[index]
        part_id = self._part_ids[index]
        children = self._children[index]
        out = {}
        for prop in properties:
            if prop == "partId":
                out[prop] = part_id
            elif prop == "blobId":
                out[prop] = (
                    part_blob_id(self.blob_id, part_id)
                    if part_id is not None and self.blob_id is not None else None
                )
            elif prop == "size":
                size = record[_SIZE]
                out[prop] = size if size is not None else record[_BE] - record[_BS]
            elif prop == "headers":
                out[prop] = [{"name": n, "value": v} for n, v in self._fields(index)]
            elif prop == "name":
                out[prop] = record[_NAME]
            elif prop == "type":
                out[prop] = record[_TYPE]
            elif prop == "charset":
                out[prop] = record[_CHARSET]
            elif prop == "disposition":
                out[prop] = record[_DISP]
            elif prop == "cid":
                out[prop] = record[_CID]
            elif prop == "language":
                out[prop] = list(record[_LANG]) if record[_LANG] is not None else None
            elif prop == "location":
                out[prop] = record[_LOC]
            elif prop == "subParts":
                out[prop] = None
            elif prop.startswith("header:"):
                name, form, is_all = parse_header_property(prop)
                out[prop] = self._header_at(index, name, form, is_all)
        if nested and children is not None:
            out["subParts"] = [self._part_json(child, properties, True) for child in children]
        return out

    def body_structure(self, properties=None):
        """
        @return: the bodyStructure EmailBodyPart tree; multiparts always
            carry subParts.
        """
        return self._part_json(0, properties or DEFAULT_BODY_PROPERTIES, True)

    def _lists(self):
        if self._lists_cache is None:
            text, html_parts, attachments = [], [], []
            self._walk([0], "mixed", False, html_parts, text, attachments, 0)
            self._lists_cache = (text, html_parts, attachments)
        return self._lists_cache

    def _walk(self, indexes, multipart_type, in_alternative, html_parts, text, attachments, depth):
        # The algorithm suggested in RFC 8621 section 4.1.4.
        text_length = len(text) if text is not None else -1
        html_length = len(html_parts) if html_parts is not None else -1
        for position, index in enumerate(indexes):
            record = self._parts[index]
            media = record[_TYPE]
            children = self._children[index]
            is_inline = (
                record[_DISP] != "attachment"
                and (media == "text/plain" or media == "text/html" or _is_media(media))
                and (position == 0 or (
                    multipart_type != "related" and (_is_media(media) or not record[_NAME])
                ))
            )
            if children is not None:
                subtype = media.split("/", 1)[1]
                self._walk(
                    children, subtype, in_alternative or subtype == "alternative",
                    html_parts, text, attachments, depth + 1,
                )
            elif is_inline:
                if multipart_type == "alternative":
                    if media == "text/plain":
                        if text is not None:
                            text.append(index)
                    elif media == "text/html":
                        if html_parts is not None:
                            html_parts.append(index)
                    else:
                        attachments.append(index)
                    continue
                if in_alternative:
                    if media == "text/plain":
                        html_parts = None
                    if media == "text/html":
                        text = None
                if text is not None:
                    text.append(index)
                if html_parts is not None:
                    html_parts.append(index)
                if (text is None or html_parts is None) and _is_media(media):
                    attachments.append(index)
            else:
                attachments.append(index)
        if multipart_type == "alternative" and text is not None and html_parts is not None:
            if text_length == len(text) and html_length != len(html_parts):
                text.extend(html_parts[html_length:])
            if html_length == len(html_parts) and text_length != len(text):
                html_parts.extend(text[text_length:])

    def text_body(self, properties=None):
        """
        @return: the textBody EmailBodyParts.
        """
        properties = properties or DEFAULT_BODY_PROPERTIES
        return [self._part_json(index, properties, False) for index in self._lists()[0]]

    def html_body(self, properties=None):
        """
        @return: the htmlBody EmailBodyParts.
        """
        properties = properties or DEFAULT_BODY_PROPERTIES
        return [self._part_json(index, properties, False) for index in self._lists()[1]]

    def attachments(self, properties=None):
        """
        @return: the attachments EmailBodyParts.
        """
        properties = properties or DEFAULT_BODY_PROPERTIES
        return [self._part_json(index, properties, False) for index in self._lists()[2]]

    def _compute_has_attachment(self):
        return any(self._parts[index][_DISP] != "inline" for index in self._lists()[2])

    def _compute_preview(self):
        for index in self._lists()[0]:
            media = self._parts[index][_TYPE]
            if media != "text/plain" and media != "text/html":
                continue
            limit = 16384 if media == "text/plain" else 262144
            text = self._text_of(index, limit)[0]
            if media == "text/html":
                text = html_to_text(text)
            preview = _preview_of(text)
            if preview:
                return preview
        return ""

    # -- contents

    def _decoded(self, index, limit=None):
        """
        @return: C{(octets, complete)}, the transfer-decoded content, or only
            a prefix of it from the first C{limit} encoded octets.
        """
        record = self._parts[index]
        start, end, encoding = record[_BS], record[_BE], record[_ENC]
        if limit is None or end - start <= limit:
            return _transfer_decode(self._raw[start:end], encoding), True
        data = self._raw[start:start + limit]
        if encoding == "base64":
            data = data.translate(None, _B64_JUNK)
            data = data[:len(data) - len(data) % 4]
        elif encoding == "quoted-printable":
            cut = data.rfind(b"=", len(data) - 2)
            if cut >= 0:
                data = data[:cut]
        return _transfer_decode(data, encoding), False

    def _text_of(self, index, limit=None):
        data, complete = self._decoded(index, limit)
        record = self._parts[index]
        text, problem = _decode_charset(data, record[_CHARSET], complete)
        if record[_ENC] not in _KNOWN_ENCODINGS:
            # Content we could not transfer-decode is shown as it is.
            problem = True
        text = text.replace("\r\n", "\n")
        if not complete and text.endswith("\r"):
            text = text[:-1]
        return text, problem, complete

    def body_value(self, part_id, max_bytes=0):
        """
        @return: the EmailBodyValue of a leaf part (charset decoded, CRLF as
            LF, truncated to C{max_bytes} UTF-8 octets when positive), or
            C{None} when there is no such part.
        """
        index = self._by_part_id.get(part_id)
        if index is None:
            return None
        limit = None
        if max_bytes and max_bytes > 0:
            limit = max_bytes * 8 + 1024
        text, problem, complete = self._text_of(index, limit)
        truncated = False
        if max_bytes and max_bytes > 0:
            encoded = text.encode("utf-8")
            if len(encoded) <= max_bytes and not complete:
                text, problem, complete = self._text_of(index)
                encoded = text.encode("utf-8")
            if len(encoded) > max_bytes:
                truncated = True
                text = encoded[:max_bytes].decode("utf-8", "ignore")
                if self._parts[index][_TYPE] == "text/html":
                    opening = text.rfind("<")
                    if opening > text.rfind(">"):
                        text = text[:opening]
        return {"value": text, "isEncodingProblem": problem, "isTruncated": truncated}

    def part_content(self, part_id):
        """
        @return: the octets of a leaf part after transfer decoding, or
            C{None} when there is no such part.
        """
        index = self._by_part_id.get(part_id)
        if index is None:
            return None
        return self._decoded(index)[0]

    def part_type(self, part_id):
        """
        @return: the media type of a leaf part, or C{None}.
        """
        index = self._by_part_id.get(part_id)
        if index is None:
            return None
        return self._parts[index][_TYPE]

    # -- derived keys

    def thread_keys(self):
        """
        @return: C{(own_ids, referenced_ids, base_subject)}.
        """
        own = self.header("Message-ID", "MessageIds") or []
        referenced = []
        for name in ("In-Reply-To", "References"):
            for message_id in self.header(name, "MessageIds") or []:
                if message_id not in referenced:
                    referenced.append(message_id)
        return own, referenced, base_subject(self.header("Subject", "Text") or "")

    def search_text(self):
        """
        @return: the text to index, by field.
        """
        def addresses(name):
            found = self.header(name, "Addresses") or []
            return ", ".join(
                "%s %s" % (a["name"], a["email"]) if a["name"] else a["email"] for a in found
            )

        body = []
        for index in self._lists()[0]:
            media = self._parts[index][_TYPE]
            if media == "text/plain" or media == "text/html":
                text = self._text_of(index)[0]
                body.append(html_to_text(text) if media == "text/html" else text)
        names = [self._parts[index][_NAME] for index in self._lists()[2]]
        return {
            "subject": self.header("Subject", "Text") or "",
            "from": addresses("From"),
            "to": addresses("To"),
            "cc": addresses("Cc"),
            "bcc": addresses("Bcc"),
            "body": "\n".join(body),
            "attachments": " ".join(name for name in names if name),
        }


# ---------------------------------------------------------------------------
# Building messages for Email/set create (RFC 8621 section 4.6)


class BuildError(Exception):
    """
    The Email given for creation is not acceptable (RFC 8621 4.6).

    @ivar description: what is wrong, for the SetError.
    @ivar properties: the invalid Email properties.
    @ivar blob_not_found: blob ids of body parts that do not exist; when
        not empty the SetError is blobNotFound.
    """

    def __init__(self, description, properties=(), blob_not_found=()):
        Exception.__init__(self, description)
        self.description = description
        self.properties = list(properties)
        self.blob_not_found = list(blob_not_found)


# Convenience properties in the order their fields are written.
_ENVELOPE = [
    ("from", "From", "Addresses"),
    ("sender", "Sender", "Addresses"),
    ("replyTo", "Reply-To", "Addresses"),
    ("to", "To", "Addresses"),
    ("cc", "Cc", "Addresses"),
    ("bcc", "Bcc", "Addresses"),
    ("subject", "Subject", "Text"),
    ("sentAt", "Date", "Date"),
    ("messageId", "Message-ID", "MessageIds"),
    ("inReplyTo", "In-Reply-To", "MessageIds"),
    ("references", "References", "MessageIds"),
]
_BODY_KEYS = ("bodyStructure", "textBody", "htmlBody", "attachments", "bodyValues")
_PART_KEYS = frozenset([
    "partId", "blobId", "size", "name", "type", "charset", "disposition",
    "cid", "language", "location", "subParts", "headers",
])
# The header fields that EmailBodyPart properties stand for.
_PART_PROPERTY_FIELDS = [
    ("type", ("content-type",)),
    ("charset", ("content-type",)),
    ("name", ("content-type", "content-disposition")),
    ("disposition", ("content-disposition",)),
    ("cid", ("content-id",)),
    ("language", ("content-language",)),
    ("location", ("content-location",)),
]
_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MONTH_NAMES = ["Jan", "Feb", "Mar", "Apr", "May", "Jun",
                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_RFC3339_INPUT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
_PLAIN_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+")
_BAD_RAW = re.compile(r"\r(?!\n)|(?<!\r)\n|\r\n(?![ \t])|\x00")
_HIGH_BYTES = bytes(range(128, 256))


def _needs_words(text):
    return not text.isascii() or "=?" in text or _CONTROL.search(text) is not None


def _encoded_words(text):
    """
    RFC 2047 B-encoded UTF-8 words of at most 64 characters, no character
    split between two words.
    """
    words = []
    chunk = bytearray()
    for char in text:
        data = char.encode("utf-8", "replace")
        if len(chunk) + len(data) > 39 and chunk:
            words.append(bytes(chunk))
            chunk = bytearray()
        chunk += data
    if chunk:
        words.append(bytes(chunk))
    return ["=?UTF-8?B?%s?=" % base64.b64encode(word).decode("ascii") for word in words]


def _text_out(text):
    text = text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    if _needs_words(text):
        return " ".join(_encoded_words(text))
    return text


def _phrase_out(name):
    if _needs_words(name):
        return " ".join(_encoded_words(name))
    if _PLAIN_PHRASE.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fold(line):
    """
    Fold a header line at spaces so that lines stay within 78 characters
    where a space allows it; unfolding gives the line back unchanged.
    """
    if len(line) <= 78:
        return line
    first_space = line.find(": ")
    lines = []
    rest = line
    floor = first_space + 2 if first_space >= 0 else 1
    while len(rest) > 78:
        cut = rest.rfind(" ", floor, 78)
        if cut < floor:
            cut = rest.find(" ", 78)
        if cut < floor:
            break
        lines.append(rest[:cut])
        rest = rest[cut:]
        floor = 1
    lines.append(rest)
    return "\r\n".join(lines)


def _format_date(text, prop):
    match = _RFC3339_INPUT.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise BuildError("%s is not an RFC 3339 date-time" % (prop,), [prop])
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        moment = datetime.datetime(int(year), int(month), int(day),
                                   int(hour), int(minute), int(second))
    except ValueError:
        raise BuildError("%s is not a valid date-time" % (prop,), [prop])
    if zone in "Zz":
        offset = 0
    else:
        offset = int(zone[1:3]) * 60 + int(zone[4:6])
        if int(zone[4:6]) >= 60:
            raise BuildError("%s has a bad offset" % (prop,), [prop])
        if zone[0] == "-":
            offset = -offset
    return _rfc5322_date(moment, offset)


def _rfc5322_date(moment, offset_minutes):
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return "%s, %02d %s %04d %02d:%02d:%02d %s%02d%02d" % (
        _DAYS[moment.weekday()], moment.day, _MONTH_NAMES[moment.month - 1], moment.year,
        moment.hour, moment.minute, moment.second, sign, hours, minutes,
    )


def _mailbox_out(address, prop):
    if not isinstance(address, dict):
        raise BuildError("%s holds an address that is not an object" % (prop,), [prop])
    email = address.get("email")
    name = address.get("name")
    if not isinstance(email, str) or (name is not None and not isinstance(name, str)):
        raise BuildError("%s holds a malformed EmailAddress" % (prop,), [prop])
    if _CONTROL.search(email) or "<" in email or ">" in email:
        raise BuildError("%s holds an email with forbidden characters" % (prop,), [prop])
    if name:
        return "%s <%s>" % (_phrase_out(name), email)
    if not email or re.search(r'[\s,;:()"]', email):
        return "<%s>" % (email,)
    return email


def _string_list(value, prop):
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BuildError("%s must be a list of strings" % (prop,), [prop])
    return value


def _form_out(form, value, prop):
    """
    @return: the text after "Name: " for a value in a parsed form, or
        C{None} when nothing is to be written.
    """
    if form == "Text":
        if not isinstance(value, str):
            raise BuildError("%s must be a string" % (prop,), [prop])
        return _text_out(value)
    if form == "Addresses":
        if not isinstance(value, list):
            raise BuildError("%s must be a list of EmailAddress" % (prop,), [prop])
        return ", ".join(_mailbox_out(address, prop) for address in value)
    if form == "GroupedAddresses":
        if not isinstance(value, list):
            raise BuildError("%s must be a list of EmailAddressGroup" % (prop,), [prop])
        pieces = []
        for group in value:
            if not isinstance(group, dict) or not isinstance(group.get("addresses"), list):
                raise BuildError("%s holds a malformed EmailAddressGroup" % (prop,), [prop])
            members = ", ".join(_mailbox_out(address, prop) for address in group["addresses"])
            name = group.get("name")
            if name is None:
                if members:
                    pieces.append(members)
            elif isinstance(name, str):
                pieces.append("%s: %s;" % (_phrase_out(name), members))
            else:
                raise BuildError("%s holds a malformed group name" % (prop,), [prop])
        return ", ".join(pieces)
    if form == "MessageIds":
        ids = _string_list(value, prop)
        for item in ids:
            if not item or re.search(r"[\s<>()]", item) or _CONTROL.search(item):
                raise BuildError("%s holds a malformed message id" % (prop,), [prop])
        return " ".join("<%s>" % (item,) for item in ids) or None
    if form == "Date":
        return _format_date(value, prop)
    urls = _string_list(value, prop)
    for url in urls:
        if re.search(r"[\s<>]", url):
            raise BuildError("%s holds a malformed URL" % (prop,), [prop])
    return ", ".join("<%s>" % (url,) for url in urls) or None


def _header_lines(field, form, is_all, value, prop):
    """
    @return: the header lines (no final CRLF) for one header property.
    """
    if value is None:
        return []
    if is_all:
        if not isinstance(value, list):
            raise BuildError("%s must be a list" % (prop,), [prop])
        values = value
    else:
        values = [value]
    lines = []
    for item in values:
        if item is None:
            continue
        if form == "Raw":
            if not isinstance(item, str) or _BAD_RAW.search(item):
                raise BuildError("%s must be a header value without bare line breaks"
                                 % (prop,), [prop])
            lines.append(field + ":" + item)
            continue
        text = _form_out(form, item, prop)
        if text is not None:
            lines.append(_fold(field + ": " + text))
    return lines


def _header_specs(spec, prop, top_level):
    """
    The header:* properties of an Email or EmailBodyPart.

    @return: C{[(property, field, form, all, value)]} and the lower-case
        field names they set.
    """
    specs = []
    fields = {}
    for key, value in spec.items():
        if not isinstance(key, str) or not key.startswith("header:"):
            continue
        try:
            name, form, is_all = parse_header_property(key)
        except ValueError as error:
            raise BuildError(str(error), [key])
        lower = name.lower()
        if top_level and lower.startswith("content-"):
            raise BuildError("Content-* header fields belong on body parts", [key])
        if lower == "content-transfer-encoding":
            raise BuildError("Content-Transfer-Encoding must not be given", [key])
        if lower in fields:
            raise BuildError("header field %s given twice" % (name,), [fields[lower], key])
        fields[lower] = key
        specs.append((key, name, form, is_all, value))
    return specs, fields


def _param(name, value, extended):
    """
    A Content-Type or Content-Disposition parameter; non-ASCII values in
    RFC 2231 form (C{extended}) or as an RFC 2047 word (for C{name}).
    """
    if value.isascii() and not _CONTROL.search(value):
        if _TOKEN.fullmatch(value):
            return "%s=%s" % (name, value)
        return '%s="%s"' % (name, value.replace("\\", "\\\\").replace('"', '\\"'))
    if not extended:
        return '%s="%s"' % (name, " ".join(_encoded_words(value)))
    encoded = "".join(
        chr(byte) if byte < 128 and (chr(byte).isalnum() or chr(byte) in "-._~")
        else "%%%02X" % byte
        for byte in value.encode("utf-8", "replace")
    )
    encoded = "utf-8''" + encoded
    if len(encoded) <= 60:
        return "%s*=%s" % (name, encoded)
    pieces = []
    while encoded:
        cut = min(60, len(encoded))
        # Never split a %XX escape.
        percent = encoded.rfind("%", max(0, cut - 2), cut)
        if percent >= 0 and cut < len(encoded):
            cut = percent
        pieces.append(encoded[:cut])
        encoded = encoded[cut:]
    return "; ".join("%s*%d*=%s" % (name, i, piece) for i, piece in enumerate(pieces))


def _crlf_only(data):
    return data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")


def _longest_line(data):
    return max(len(line) for line in data.split(b"\n"))


def _is_seven_bit(data):
    return (data.isascii() and b"\x00" not in data and _crlf_only(data)
            and _longest_line(data) <= 999)


def _base64_body(data):
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


def _encode_text_value(data):
    """
    @param data: UTF-8 text with CRLF line breaks.
    @return: C{(transfer_encoding, body)}
    """
    if _is_seven_bit(data):
        return "7bit", data
    high = len(data) - len(data.translate(None, _HIGH_BYTES))
    if b"\x00" in data or high * 3 > len(data):
        return "base64", _base64_body(data)
    quoted = binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True)
    return "quoted-printable", quoted.replace(b"\n", b"\r\n")


def _encode_blob(data, media):
    if _is_seven_bit(data):
        return "7bit", data
    if media.startswith("message/") and b"\x00" not in data and _crlf_only(data) \
            and _longest_line(data) <= 999:
        # RFC 2046 5.2.1: no base64 or quoted-printable for message/rfc822.
        return "8bit", data
    return "base64", _base64_body(data)


class _Builder:
    """
    Turns the body properties of an Email given for creation into a tree of
    nodes ready to be written.
    """

    def __init__(self, values, blob_content):
        self._values = values
        self._blob_content = blob_content
        self.missing = []

    def part(self, spec, prop, default_disposition=None, forced_type=None):
        if not isinstance(spec, dict):
            raise BuildError("%s holds a body part that is not an object" % (prop,), [prop])
        for key in spec:
            if key not in _PART_KEYS and not (isinstance(key, str) and key.startswith("header:")):
                raise BuildError("unknown body part property %r" % (key,), [prop])
        if spec.get("headers"):
            raise BuildError("headers must not be given; set header:* properties", [prop])
        try:
            specs, fields = _header_specs(spec, prop, False)
        except BuildError as error:
            raise BuildError(error.description, [prop])
        for key, names in _PART_PROPERTY_FIELDS:
            if spec.get(key) is not None:
                for field in names:
                    if field in fields:
                        raise BuildError("%s and %s set the same header field"
                                         % (key, fields[field]), [prop])
        for key in ("name", "charset", "disposition", "cid", "location", "partId", "blobId"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise BuildError("%s of a body part must be a string" % (key,), [prop])
        language = spec.get("language")
        if language is not None:
            _string_list(language, prop)
        media = spec.get("type")
        if media is not None:
            if not isinstance(media, str) or _media_type(media) is None:
                raise BuildError("bad type %r" % (media,), [prop])
            media = _media_type(media)
        if forced_type is not None:
            if (media or forced_type) != forced_type:
                raise BuildError("%s must hold a %s part" % (prop, forced_type), [prop])
            media = forced_type
        extra = []
        for key, name, form, is_all, value in specs:
            try:
                extra.extend(_header_lines(name, form, is_all, value, key))
            except BuildError as error:
                raise BuildError(error.description, [prop])
        explicit_type = None
        for line in extra:
            if line.lower().startswith("content-type:"):
                explicit_type = line
        node = {"media": media, "params": [], "lines": [], "extra": extra,
                "explicit_type": explicit_type, "children": None, "content": b"",
                "encoding": "7bit", "boundary": None}
        if explicit_type is not None:
            main, params = _parse_params(_unfold(explicit_type.split(":", 1)[1]))
            node["media"] = media = _media_type(main) or "text/plain"
            node["boundary"] = params.get("boundary")
        sub_parts = spec.get("subParts")
        if sub_parts is not None:
            if not isinstance(sub_parts, list):
                raise BuildError("subParts must be a list", [prop])
            if spec.get("partId") is not None or spec.get("blobId") is not None:
                raise BuildError("a multipart has no partId or blobId", [prop])
            media = media or "multipart/mixed"
            if not media.startswith("multipart/"):
                raise BuildError("a part with subParts must be multipart/*", [prop])
            if explicit_type is not None and not node["boundary"]:
                raise BuildError("a Content-Type for a multipart needs a boundary", [prop])
            node["media"] = media
            node["children"] = [self.part(child, prop) for child in sub_parts]
        else:
            self._leaf(spec, prop, node)
        self._content_lines(spec, node, default_disposition)
        return node

    def _leaf(self, spec, prop, node):
        media = node["media"]
        if media is not None and media.startswith("multipart/"):
            raise BuildError("a multipart part needs subParts", [prop])
        part_id = spec.get("partId")
        blob_id = spec.get("blobId")
        if part_id is not None and blob_id is not None:
            raise BuildError("a body part takes a partId or a blobId, not both", [prop])
        if part_id is not None:
            if spec.get("charset") is not None or spec.get("size") is not None:
                raise BuildError("charset and size must be omitted with a partId", [prop])
            value = self._values.get(part_id)
            if value is None:
                raise BuildError("partId %s is not in bodyValues" % (part_id,),
                                 [prop, "bodyValues"])
            node["media"] = media or "text/plain"
            text = re.sub(r"\r\n|\r|\n", "\r\n", value["value"])
            node["encoding"], node["content"] = _encode_text_value(
                text.encode("utf-8", "replace"))
            node["params"].append(("charset", "utf-8"))
        elif blob_id is not None:
            content = self._blob_content(blob_id)
            if content is None:
                if blob_id not in self.missing:
                    self.missing.append(blob_id)
                content = b""
            content = bytes(content)
            node["media"] = media = media or "application/octet-stream"
            charset = spec.get("charset")
            if charset is None and media.startswith("text/") and not content.isascii():
                try:
                    content.decode("utf-8")
                    charset = "utf-8"
                except UnicodeDecodeError:
                    pass
            if charset is not None:
                node["params"].append(("charset", charset))
            node["encoding"], node["content"] = _encode_blob(content, media)
        else:
            raise BuildError("a body part needs a partId, a blobId or subParts", [prop])

    def _content_lines(self, spec, node, default_disposition):
        name = spec.get("name")
        if name is not None and node["children"] is None:
            node["params"].append(("name", name))
        disposition = spec.get("disposition") or default_disposition
        lines = node["lines"]
        if disposition is not None:
            line = "Content-Disposition: " + _WHITE.sub("", disposition).lower()
            if name is not None:
                line += "; " + _param("filename", name, True)
            lines.append(_fold(line))
        if spec.get("cid") is not None:
            cid = spec["cid"].strip().strip("<>")
            lines.append("Content-ID: <%s>" % (_CONTROL.sub("", cid),))
        if spec.get("language"):
            lines.append(_fold("Content-Language: " + ", ".join(spec["language"])))
        if spec.get("location") is not None:
            lines.append("Content-Location: " + _CONTROL.sub("", spec["location"]))


def _new_boundary():
    return "=_" + secrets.token_hex(12)


def _serialize(node, top_lines=()):
    lines = list(top_lines)
    if node["children"] is not None:
        bodies = [_serialize(child) for child in node["children"]]
        boundary = node["boundary"]
        if boundary is None:
            boundary = _new_boundary()
            while any(("--" + boundary).encode("ascii") in body for body in bodies):
                boundary = _new_boundary()
        if node["explicit_type"] is None:
            lines.append('Content-Type: %s; boundary="%s"' % (node["media"], boundary))
        delimiter = b"--" + boundary.encode("utf-8")
        body = b"".join(delimiter + b"\r\n" + child + b"\r\n" for child in bodies)
        body += delimiter + b"--\r\n"
    else:
        if node["explicit_type"] is None:
            line = "Content-Type: " + node["media"]
            for key, value in node["params"]:
                line += "; " + _param(key, value, False)
            lines.append(_fold(line))
        if node["encoding"] != "7bit":
            lines.append("Content-Transfer-Encoding: " + node["encoding"])
        body = node["content"]
    lines.extend(node["lines"])
    lines.extend(node["extra"])
    head = "".join(line + "\r\n" for line in lines).encode("utf-8", "replace")
    return head + b"\r\n" + body


def _body_values(properties):
    values = properties.get("bodyValues")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise BuildError("bodyValues must be an object", ["bodyValues"])
    for key, value in values.items():
        if not isinstance(value, dict) or not isinstance(value.get("value"), str):
            raise BuildError("bodyValues/%s must hold a string value" % (key,), ["bodyValues"])
        for flag in ("isEncodingProblem", "isTruncated"):
            if value.get(flag) not in (None, False):
                raise BuildError("bodyValues/%s/%s must be false" % (key, flag), ["bodyValues"])
    return values


def _body_tree(properties, builder):
    """
    @return: the root node of the body, from bodyStructure or from
        textBody, htmlBody and attachments.
    """
    structure = properties.get("bodyStructure")
    if structure is not None:
        given = [key for key in ("textBody", "htmlBody", "attachments")
                 if properties.get(key) is not None]
        if given:
            raise BuildError("bodyStructure excludes textBody, htmlBody and attachments",
                             ["bodyStructure"] + given)
        return builder.part(structure, "bodyStructure")
    bodies = {}
    for key, media in (("textBody", "text/plain"), ("htmlBody", "text/html")):
        parts = properties.get(key)
        if parts is None:
            continue
        if not isinstance(parts, list) or len(parts) != 1:
            raise BuildError("%s must hold exactly one body part" % (key,), [key])
        if isinstance(parts[0], dict) and parts[0].get("subParts") is not None:
            raise BuildError("%s must hold a %s part" % (key, media), [key])
        bodies[key] = builder.part(parts[0], key, forced_type=media)
    attachments = properties.get("attachments") or []
    if not isinstance(attachments, list):
        raise BuildError("attachments must be a list", ["attachments"])
    html_node = bodies.get("htmlBody")
    inline, others = [], []
    for spec in attachments:
        embedded = (html_node is not None and isinstance(spec, dict)
                    and spec.get("cid") is not None and spec.get("disposition") != "attachment")
        node = builder.part(spec, "attachments", "inline" if embedded else "attachment")
        (inline if embedded else others).append(node)

    def multipart(media, children):
        return {"media": media, "params": [], "lines": [], "extra": [], "explicit_type": None,
                "children": children, "content": b"", "encoding": "7bit", "boundary": None}

    if inline:
        html_node = multipart("multipart/related", [html_node] + inline)
    text_node = bodies.get("textBody")
    if text_node is not None and html_node is not None:
        body = multipart("multipart/alternative", [text_node, html_node])
    else:
        body = text_node or html_node
    if others:
        return multipart("multipart/mixed", ([body] if body is not None else []) + others)
    if body is None:
        body = {"media": "text/plain", "params": [], "lines": [], "extra": [],
                "explicit_type": None, "children": None, "content": b"",
                "encoding": "7bit", "boundary": None}
    return body


def build(properties, blob_content, message_id_domain, now):
    """
    Write the message of an Email given to Email/set create.

    @param properties: the Email properties given by the client, without
        mailboxIds, keywords and receivedAt.
    @param blob_content: C{blob_content(blob_id)} gives the octets of a blob,
        or C{None} when there is no such blob.
    @param message_id_domain: the domain of a generated Message-ID.
    @param now: the Date when C{sentAt} is not given (naive means UTC).
    @return: the message octets, with CRLF line breaks.
    @raise BuildError: when RFC 8621 4.6 forbids what was given.
    """
    if not isinstance(properties, dict):
        raise BuildError("an Email must be an object")
    envelope = {prop for prop, _, _ in _ENVELOPE}
    for key in properties:
        if key in envelope or key in _BODY_KEYS or key == "headers":
            continue
        if isinstance(key, str) and key.startswith("header:"):
            continue
        raise BuildError("property %r cannot be set on creation" % (key,), [key])
    if properties.get("headers"):
        raise BuildError("headers must not be given; set header:* properties", ["headers"])
    specs, fields = _header_specs(properties, "", True)
    for prop, field, _ in _ENVELOPE:
        if prop in properties and field.lower() in fields:
            raise BuildError("%s and %s set the same header field" % (prop, fields[field.lower()]),
                             [prop, fields[field.lower()]])
    values = _body_values(properties)
    builder = _Builder(values, blob_content)
    root = _body_tree(properties, builder)
    if builder.missing:
        raise BuildError("blob not found: " + ", ".join(builder.missing),
                         blob_not_found=builder.missing)
    given = {field.lower() for prop, field, _ in _ENVELOPE if properties.get(prop) is not None}
    given.update(fields)
    root_fields = set()
    structure = properties.get("bodyStructure")
    if isinstance(structure, dict):
        for key in structure:
            if isinstance(key, str) and key.startswith("header:"):
                lower = key[7:].split(":", 1)[0].lower()
                if lower in given:
                    raise BuildError("bodyStructure repeats a header field of the Email",
                                     ["bodyStructure"])
                root_fields.add(lower)

    lines = []
    for prop, field, form in _ENVELOPE:
        value = properties.get(prop)
        if prop == "messageId" and value == []:
            value = None
        if value is None:
            if field.lower() in fields or field.lower() in root_fields:
                continue
            if prop == "sentAt":
                if now.tzinfo is None:
                    now = now.replace(tzinfo=datetime.timezone.utc)
                offset = int(now.utcoffset().total_seconds() // 60)
                lines.append("Date: " + _rfc5322_date(now, offset))
            elif prop == "messageId":
                lines.append("Message-ID: <%s@%s>" % (secrets.token_hex(16), message_id_domain))
            continue
        lines.extend(_header_lines(field, form, False, value, prop))
    for prop, field, form, is_all, value in specs:
        lines.extend(_header_lines(field, form, is_all, value, prop))
    if "mime-version" not in fields and "mime-version" not in root_fields:
        lines.append("MIME-Version: 1.0")
    return _serialize(root, lines)
