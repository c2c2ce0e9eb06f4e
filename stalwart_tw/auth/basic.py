"""
HTTP Basic authentication (RFC 7617) against the directory.

Credentials are decoded as UTF-8, the charset the server's challenge
announces. A malformed header is treated like no header: the client gets
the challenge again, never a server error.
"""

import binascii
from base64 import b64decode

CHALLENGE = b'Basic realm="Stalwart JMAP", charset="UTF-8"'


def parse_basic(header):
    """
    Decode an C{Authorization} header value.

    @param header: the raw header value, or C{None}.
    @return: C{(login, password)} as text, or C{None} when the header is
        absent, not Basic, or malformed.
    """
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic" or not encoded:
        return None
    try:
        decoded = b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    login, separator, password = decoded.partition(":")
    if not separator or not login:
        return None
    return login, password
