"""
Keywords of messages (RFC 8621 section 4.1.1): 1 to 255 characters of
ASCII from %x21 to %x7e except ( ) { ] % * " \\, matched without regard to
case and returned in lower case. The IMAP flags \\Recent and \\Deleted have
no JMAP form; a client cannot set them.
"""

_FORBIDDEN = frozenset('(){]%*"\\')
MAX_KEYWORD = 255


class KeywordError(ValueError):
    """
    Not a keyword; the message completes "'x' ...".
    """


def check_keyword(value):
    """
    @return: the keyword, lower-cased.
    @raise KeywordError: it is no valid keyword.
    """
    if not isinstance(value, str):
        raise KeywordError(f"must be a keyword string, not {value!r}")
    if not 1 <= len(value) <= MAX_KEYWORD or any(
        not 0x21 <= ord(character) <= 0x7E or character in _FORBIDDEN for character in value
    ):
        raise KeywordError(f"is no valid keyword: {value!r}")
    return value.lower()


def check_keyword_set(value):
    """
    @return: the set of keywords of a C{String[Boolean]} value.
    @raise KeywordError: a key is no keyword or a value is not C{true}.
    """
    if not isinstance(value, dict):
        raise KeywordError("must be an object of keywords to true")
    keywords = set()
    for keyword, flag in value.items():
        if flag is not True:
            raise KeywordError(f"must map each keyword to true, not {flag!r}")
        keywords.add(check_keyword(keyword))
    return keywords
