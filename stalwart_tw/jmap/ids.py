"""
JMAP ids for integer keys: short, URL-safe strings (RFC 8620 section 1.2).

An integer is written in a base-32 alphabet of digits and lower-case
letters without the look-alikes i, l, o and u, behind a one-letter prefix
that names what kind of object it is, so that an id can never be read as
another kind's (and never starts with a digit or '-', as the RFC advises).
"""

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_VALUES = {character: value for value, character in enumerate(ALPHABET)}
# Two digits at a time: ids are written on every object of every answer.
_PAIRS = [high + low for high in ALPHABET for low in ALPHABET]


def encode_id(prefix, number):
    """
    @return: the id of object C{number} of the kind C{prefix} (one letter).
    """
    if number < 0:
        raise ValueError("ids are not negative")
    text = ""
    while number >= 1024:
        text = _PAIRS[number & 1023] + text
        number >>= 10
    return prefix + (_PAIRS[number] if number >= 32 else ALPHABET[number]) + text


def decode_id(prefix, text):
    """
    @return: the number in an id of kind C{prefix}, or C{None} when
        C{text} is not such an id (a client's garbage is simply not found).
    """
    if not isinstance(text, str) or not 1 < len(text) <= 14 or not text.startswith(prefix):
        return None
    digits = text[len(prefix):]
    # One number, one id: no leading zeros.
    if digits[0] == "0" and len(digits) > 1:
        return None
    number = 0
    for character in digits:
        value = _VALUES.get(character)
        if value is None:
            return None
        number = number * 32 + value
    # Past 63 bits no database column holds it: no object has that id.
    return number if number < 2**63 else None
