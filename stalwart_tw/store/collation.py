"""
The collations of JMAP sorts (RFC 4790 registry, RFC 5051), as key
functions of a string, and the same under SQL names on every SQLite
connection of the store (with C{jmap_casefold}, the case folding of
text filters), so that a query sorts and filters in SQL exactly as it
would in Python.
"""

import unicodedata

_ASCII_UPPER_TO_LOWER = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
)


def ascii_casemap(text):
    """RFC 4790 section 9.2: only A-Z fold."""
    return text.translate(_ASCII_UPPER_TO_LOWER)


def ascii_numeric(text):
    """
    RFC 4790 section 9.1: the leading decimal digits as a number; a string
    that starts with none is positive infinity, equal to every other such.
    """
    digits = len(text) - len(text.lstrip("0123456789"))
    return (0, int(text[:digits])) if digits else (1, 0)


def unicode_casemap(text):
    """
    RFC 5051: titlecase each character, then NFKD; code point order is the
    UTF-8 octet order the RFC compares in.
    """
    return unicodedata.normalize("NFKD", "".join(character.title() for character in text))


COLLATIONS = {
    "i;ascii-casemap": ascii_casemap,
    "i;ascii-numeric": ascii_numeric,
    "i;unicode-casemap": unicode_casemap,
}

# The key function -> its name in SQL.
SQL_NAMES = {
    ascii_casemap: "jmap_ascii_casemap",
    ascii_numeric: "jmap_ascii_numeric",
    unicode_casemap: "jmap_unicode_casemap",
}


def _comparison(key):
    def compare(first, second):
        first, second = key(first), key(second)
        return (first > second) - (first < second)

    return compare


def casefold(text):
    """The case folding of text filters (None stays None)."""
    return None if text is None else text.casefold()


def register(dbapi_connection):
    """
    Give a SQLite connection the collations and C{jmap_casefold}.
    """
    for key, name in SQL_NAMES.items():
        dbapi_connection.create_collation(name, _comparison(key))
    dbapi_connection.create_function("jmap_casefold", 1, casefold, deterministic=True)
