"""
The text of the full-text index, with no SQL: what a parsing process
needs (it imports no database code) and what any backend indexes.

Language work happens when a WriteBatch is built, never when it is applied:
L{index_row} detects the language of a message (py3langid), folds and
stems its words (PyStemmer, the Snowball stemmers) and returns an
C{email_search} row whose text columns already hold the token stream, so
applying the batch is a pure function of it on every node. L{terms} reads
the text of a JMAP filter the same way, for store/fts.py to turn into its
index's query, and L{highlight_terms} marks the words a filter matched.

The token stream of a column: tokens separated by single spaces. Every word
is NFKC-normalised, case-folded and stripped of accents. Runs of Han, kana
and Hangul become overlapping bigrams (a run of one character stays one
token). A word joined by C{. @ - _ +} ("alice@example.com") gives its parts,
then the sides of its "@" and their dotted suffixes ("example.com"), then
the whole. In the subject, body and attachments of a message whose language
has a stemmer, the exact tokens are followed by a separator token that no
query can produce and then by the stem of every exact token, one for one:
exact phrases match the first region, stemmed phrases the second, and a
single word matches itself in either or its stem in the second.
"""

import operator
import re
import threading
from itertools import compress
import unicodedata
from functools import lru_cache

import Stemmer


# JMAP filter field -> email_search column, in the FTS5 table's order.
COLUMNS = {
    "subject": "subject",
    "from": "from_text",
    "to": "to_text",
    "cc": "cc_text",
    "bcc": "bcc_text",
    "body": "body",
    "attachments": "attachments",
}
FIELDS = tuple(COLUMNS)

# Fields holding language text; addresses and names are not stemmed.
_STEMMED_FIELDS = frozenset({"subject", "body", "attachments"})

# Characters of each field indexed at most: bounds the work and the row.
MAX_FIELD_CHARS = {
    "subject": 16 * 1024,
    "from": 64 * 1024,
    "to": 64 * 1024,
    "cc": 64 * 1024,
    "bcc": 64 * 1024,
    "body": 1024 * 1024,
    "attachments": 256 * 1024,
}

# Longer words (base64, hashes) are not indexed; longer joined words are
# indexed by their parts only.
MAX_WORD = 64
MAX_JOINED = 128

# Query terms beyond this many are ignored: bounds the FTS5 expression.
MAX_QUERY_TERMS = 64

# Language detection reads this much of subject + body, and trusts a
# guess only from enough letters (a CJK character counts three) and with
# enough confidence; otherwise the default language is used.
DETECT_CHARS = 1024
MIN_DETECT_LETTERS = 20
MIN_CONFIDENCE = 0.85

_ROWID_EMAIL_BITS = 32
_MAX_ACCOUNT = 2**31 - 1
_MAX_EMAIL = 2**_ROWID_EMAIL_BITS - 1

# Between the exact and the stemmed region of a column: a private-use
# character, which no query token can contain, so no phrase spans the two.
_REGION_SEPARATOR = "\ue000"


# --- Characters and tokens -------------------------------------------------

_CJK_RANGES = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u3005-\u3007"  # ideographic iteration and closing marks, zero
    "\u3041-\u3096\u309d-\u309f"  # Hiragana
    "\u30a1-\u30fa\u30fc-\u30ff"  # Katakana (not the middle dot)
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # half-width Katakana
    "\U00020000-\U0003134f"  # CJK extensions B to G
)
_CJK_CHAR = re.compile(f"[{_CJK_RANGES}]")

# Accents: the generic combining diacritics. Script-specific marks (Indic
# vowel signs, Hebrew points) are part of their letters and stay.
_ACCENTS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")

JOINER_CHARS = ".@\\-_+"
_JOINERS = re.compile(f"[{JOINER_CHARS}]")


def _word_class():
    # Letters, numbers and marks outside the CJK ranges, as one character
    # class (Python's \w lacks marks, which Indic words need).
    category = unicodedata.category
    ranges, start = [], None
    for code in range(0x32000):
        character = chr(code)
        wanted = category(character)[0] in "LNM" and not _CJK_CHAR.match(character)
        if wanted and start is None:
            start = code
        elif not wanted and start is not None:
            ranges.append((start, code - 1))
            start = None
    return "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


_WORD_CHARS = _word_class()
# A CJK run, or a word, possibly joined ("alice@example.com").
_UNIT = re.compile(
    f"(?P<cjk>[{_CJK_RANGES}]+)"
    f"|[{_WORD_CHARS}]+(?P<joined>(?:[{JOINER_CHARS}][{_WORD_CHARS}]+)+)?"
)


def _fold(text):
    """Compatibility-normalise and case-fold (accents stay: stemmers use them)."""
    return unicodedata.normalize("NFKC", text).casefold()


def _strip(token):
    """A folded token without its accents."""
    return token if token.isascii() else _strip_accents(token)


@lru_cache(maxsize=65536)
def _strip_accents(token):
    decomposed = unicodedata.normalize("NFD", token)
    return unicodedata.normalize("NFC", _ACCENTS.sub("", decomposed))


def _bigrams(run):
    if len(run) == 1:
        return [run]
    return [run[i:i + 2] for i in range(len(run) - 1)]


def _joined_tokens(word):
    """The tokens of a joined word: parts, sides of "@" and dotted suffixes, whole."""
    tokens = [part for part in _JOINERS.split(word) if len(part) <= MAX_WORD]
    if len(word) > MAX_JOINED:
        return tokens
    sides = word.split("@") if "@" in word else [word]
    for side in sides:
        labels = side.split(".")
        start = 0 if len(sides) > 1 else 1
        for first in range(start, len(labels) - 1):
            tokens.append(".".join(labels[first:]))
        if len(sides) > 1 and len(labels) == 1 and _JOINERS.search(side):
            tokens.append(side)
    tokens.append(word)
    return tokens


def _units(folded):
    """
    The units of folded text: C{(kind, tokens)} with kind C{"word"},
    C{"joined"} (tokens end with the whole, if it is kept) or C{"cjk"}.
    """
    for found in _UNIT.finditer(folded):
        run = found.group("cjk")
        if run is not None:
            yield "cjk", _bigrams(run)
            continue
        word = found.group()
        if found.group("joined") is None:
            if len(word) <= MAX_WORD:
                yield "word", [word]
        else:
            yield "joined", _joined_tokens(word)


# ASCII text (most mail) has no CJK, no marks, no accents: one findall
# gives its words, and only those with a joiner need looking at.
_ASCII_UNIT = re.compile(f"[a-z0-9]+(?:[{JOINER_CHARS}][a-z0-9]+)*")


def _plain(words):
    # Plain words past the length limit are not indexed.
    if words and max(map(len, words)) > MAX_WORD:
        return [word for word in words if len(word) <= MAX_WORD]
    return words


def _ascii_tokens(folded):
    # The loops are C's (findall, map): most words are plain, and only the
    # joined ones ("alice@example.com") are expanded in Python.
    words = _ASCII_UNIT.findall(folded)
    joined = list(compress(range(len(words)), map(operator.not_, map(str.isalnum, words))))
    if not joined:
        return _plain(words)
    tokens, start = [], 0
    for index in joined:
        tokens.extend(_plain(words[start:index]))
        tokens.extend(_joined_tokens(words[index]))
        start = index + 1
    tokens.extend(_plain(words[start:]))
    return tokens


def _tokens(folded):
    """The index tokens of folded text, in order."""
    if folded.isascii():
        return _ascii_tokens(folded)
    tokens = []
    append, extend = tokens.append, tokens.extend
    for found in _UNIT.finditer(folded):
        run = found.group("cjk")
        if run is not None:
            extend(_bigrams(run))
        elif found.group("joined") is None:
            word = found.group()
            if len(word) <= MAX_WORD:
                append(word)
        else:
            extend(_joined_tokens(found.group()))
    return tokens


def _stems(tokens, stemmer):
    return [_strip(stem) for stem in stemmer.stemWords(tokens)]


def _stream(text, stemmer):
    """The token stream of one column (see the module docstring)."""
    folded = _fold(text)
    tokens = _tokens(folded)
    exact = tokens if folded.isascii() else [_strip(token) for token in tokens]
    stream = " ".join(exact)
    if stemmer is not None and tokens:
        stems = stemmer.stemWords(tokens) if folded.isascii() else _stems(tokens, stemmer)
        if stems != exact:
            stream = f"{stream} {_REGION_SEPARATOR} {' '.join(stems)}"
    return stream


# --- Languages -------------------------------------------------------------

# ISO 639-1 -> Snowball algorithm, for those this PyStemmer has.
_SNOWBALL = {
    "ar": "arabic", "ca": "catalan", "cs": "czech", "da": "danish", "de": "german",
    "el": "greek", "en": "english", "eo": "esperanto", "es": "spanish", "et": "estonian",
    "eu": "basque", "fa": "persian", "fi": "finnish", "fr": "french", "ga": "irish",
    "hi": "hindi", "hu": "hungarian", "hy": "armenian", "id": "indonesian", "it": "italian",
    "lt": "lithuanian", "nb": "norwegian", "ne": "nepali", "nl": "dutch", "nn": "norwegian",
    "no": "norwegian", "pl": "polish", "pt": "portuguese", "ro": "romanian", "ru": "russian",
    "sr": "serbian", "st": "sesotho", "sv": "swedish", "ta": "tamil", "tr": "turkish",
    "yi": "yiddish",
}
_SNOWBALL = {code: name for code, name in _SNOWBALL.items() if name in Stemmer.algorithms()}
STEMMED_LANGUAGES = frozenset(_SNOWBALL)

# What detection may answer: languages we stem, less those it mostly names
# by mistake on short mail, plus the CJK languages (indexed by bigrams).
_DETECTABLE = (STEMMED_LANGUAGES - {"eo", "st", "yi"}) | {"zh", "ja", "ko"}

_identifier = None
_identifier_lock = threading.Lock()
_per_thread = threading.local()


def _language_identifier():
    # Loaded on first use (the model takes most of a second): importing
    # this module, as creating tables does, stays cheap.
    global _identifier
    with _identifier_lock:
        if _identifier is None:
            from py3langid import langid

            full = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
            full.set_languages(sorted(_DETECTABLE & set(full.nb_classes)))
            # A model of just those languages: the full one would stay
            # referenced for set_languages, 28 MB in every parsing process.
            _identifier = langid.LanguageIdentifier(
                full.nb_ptc.copy(), full.nb_pc, full.nb_classes, full.tk_nextmove,
                full.tk_output, norm_probs=True, tk_row=full.tk_row)
        return _identifier


def warm_up():
    """
    Load the language model now rather than on the first message.
    """
    _language_identifier()


def _check_language(language):
    if not isinstance(language, str) or not 0 < len(language) <= 8:
        raise ValueError(f"not a language code: {language!r}")
    return language.lower()


def detect_language(text, default_language="en"):
    """
    @return: the ISO 639-1 code of the language of C{text}, among those
        stemmed and the CJK ones, or C{default_language} when the text is
        too short or the guess unsure.
    """
    default_language = _check_language(default_language)
    sample = text[:DETECT_CHARS]
    weight = sum(map(str.isalpha, sample)) + 2 * len(_CJK_CHAR.findall(sample))
    if weight < MIN_DETECT_LETTERS:
        return default_language
    language, confidence = _language_identifier().classify(sample)
    if confidence < MIN_CONFIDENCE:
        return default_language
    return language


def _stemmer(language):
    """This thread's stemmer for C{language}, or None (PyStemmer objects are not thread-safe)."""
    name = _SNOWBALL.get(language)
    if name is None:
        return None
    stemmers = getattr(_per_thread, "stemmers", None)
    if stemmers is None:
        stemmers = _per_thread.stemmers = {}
    stemmer = stemmers.get(name)
    if stemmer is None:
        stemmer = stemmers[name] = Stemmer.Stemmer(name)
    return stemmer


def _stemmers(languages):
    if isinstance(languages, str):
        languages = (languages,)
    found = {}
    for language in languages:
        if isinstance(language, str):
            stemmer = _stemmer(language.lower())
            if stemmer is not None:
                found.setdefault(_SNOWBALL[language.lower()], stemmer)
    return list(found.values())


# --- Rows ------------------------------------------------------------------


def search_rowid(account_id, email_id):
    """
    @return: the rowid of an email's C{email_search} row: the account in
        the high 31 bits, the email in the low 32, so the rows of one
        account are one rowid range of the FTS index.
    @raise ValueError: an id is out of range.
    """
    for value, name, top in ((account_id, "account id", _MAX_ACCOUNT), (email_id, "email id", _MAX_EMAIL)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
            raise ValueError(f"{name} {value!r} is not an integer from 0 to {top}")
    return account_id << _ROWID_EMAIL_BITS | email_id


def _bounded(text, limit):
    if len(text) <= limit:
        return text
    text = text[:limit]
    # Do not index the half of the word cut at the limit.
    space = text.rfind(" ", limit - 256)
    return text[:space] if space > 0 else text


def index_row(account_id, email_id, fields, default_language="en"):
    """
    The C{email_search} row of an email, ready for
    C{batch.insert("email_search", **row)}.

    @param fields: field name (C{subject}, C{from}, C{to}, C{cc}, C{bcc},
        C{body}, C{attachments}) -> its text; a missing one is empty.
    @param default_language: the language assumed when detection is unsure.
    @return: the row's column values: rowid, ids, the detected language and
        the token stream of each text column.
    """
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown search fields: {sorted(unknown)}")
    texts = {}
    for field in FIELDS:
        value = fields.get(field) or ""
        if not isinstance(value, str):
            raise TypeError(f"search field {field!r} must be text, not {type(value).__name__}")
        texts[field] = _bounded(value, MAX_FIELD_CHARS[field])
    language = detect_language(f"{texts['subject']}\n{texts['body'][:DETECT_CHARS]}", default_language)
    stemmer = _stemmer(language)
    row = {
        "rowid": search_rowid(account_id, email_id),
        "account_id": account_id,
        "email_id": email_id,
        "language": language,
    }
    for field, column in COLUMNS.items():
        row[column] = _stream(texts[field], stemmer if field in _STEMMED_FIELDS else None)
    return row


def account_rowids(account_id):
    """
    @return: the first and last C{email_search} rowid of an account's rows.
    """
    low = search_rowid(account_id, 0)
    return low, low | _MAX_EMAIL


# --- Queries ---------------------------------------------------------------

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"'})
_QUOTED = re.compile(r'"([^"]*)(?:"|$)')


def _query_parts(text):
    """The query as C{(is_phrase, text)}: quoted phrases and bare words, in order."""
    text = text.translate(_QUOTES)
    parts, position = [], 0
    for found in _QUOTED.finditer(text):
        parts.extend((False, chunk) for chunk in text[position:found.start()].split())
        parts.append((True, found.group(1)))
        position = found.end()
    parts.extend((False, chunk) for chunk in text[position:].split())
    return parts


class Term:
    """
    One ANDed term of a query: alternatives of token sequences (a sequence
    is a phrase), or one CJK character matched as a prefix.
    """

    def __init__(self, alternatives, prefix=False):
        self.alternatives = list(dict.fromkeys(alternatives))
        self.prefix = prefix


def _term(is_phrase, text, stemmers):
    folded = _fold(text)
    units = list(_units(folded))
    if not units:
        return None
    if not is_phrase and len(units) == 1:
        kind, tokens = units[0]
        if kind == "word":
            token = tokens[0]
            stems = [_strip(stemmer.stemWord(token)) for stemmer in stemmers]
            return Term([(_strip(token),)] + [(stem,) for stem in stems])
        if kind == "joined" and _JOINERS.search(tokens[-1]):
            # A joined word matches as a whole ("example.com"); one too
            # long to be indexed whole falls through to a phrase of parts.
            return Term([(_strip(tokens[-1]),)])
    tokens = [token for _, unit_tokens in units for token in unit_tokens]
    if not tokens:
        return None
    exact = tuple(_strip(token) for token in tokens)
    if len(exact) == 1 and len(exact[0]) == 1 and _CJK_CHAR.match(exact[0]):
        return Term([exact], prefix=True)
    return Term([exact] + [tuple(_stems(tokens, stemmer)) for stemmer in stemmers])


def terms(text, languages):
    """
    @return: the L{Term}s of a query text, all required: words match
        themselves or their stems in any of C{languages}, C{"quoted
        phrases"} adjacent words, CJK text its bigrams.
    """
    if not isinstance(text, str):
        raise TypeError(f"a search text must be a string, not {type(text).__name__}")
    stemmers = _stemmers(languages)
    found = []
    for is_phrase, part in _query_parts(text):
        term = _term(is_phrase, part, stemmers)
        if term is not None:
            found.append(term)
            if len(found) == MAX_QUERY_TERMS:
                break
    return found


# --- Highlighting ----------------------------------------------------------

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


def _escape(text):
    return text.translate(_ESCAPES)


class _Highlighter:
    """Marks, in a subject or preview, the words a query matches."""

    def __init__(self, text, languages):
        self._stemmers = _stemmers(languages)
        # Tokens a word may equal (or stem to) to match.
        self._words = set()
        self._bigrams = set()
        self._characters = set()
        if not isinstance(text, str):
            raise TypeError(f"a search text must be a string, not {type(text).__name__}")
        for is_phrase, part in _query_parts(text):
            for kind, tokens in _units(_fold(part)):
                if kind == "cjk":
                    for token in tokens:
                        (self._bigrams if len(token) == 2 else self._characters).add(token)
                    continue
                if kind == "joined" and not is_phrase and _JOINERS.search(tokens[-1]):
                    tokens = tokens[-1:]
                for token in tokens:
                    self._words.add(_strip(token))
                    self._words.update(_strip(s.stemWord(token)) for s in self._stemmers)

    def __bool__(self):
        return bool(self._words or self._bigrams or self._characters)

    def _matches(self, word):
        folded = _fold(word)
        if _strip(folded) in self._words:
            return True
        if _JOINERS.search(folded):
            return False
        return any(_strip(s.stemWord(folded)) in self._words for s in self._stemmers)

    def _spans(self, text):
        for found in _UNIT.finditer(text):
            start = found.start()
            if found.group("cjk") is not None:
                yield from self._cjk_spans(found.group(), start)
                continue
            word = found.group()
            if found.group("joined") is None:
                if self._matches(word):
                    yield start, found.end()
                continue
            yield from self._joined_spans(word, start)

    def _cjk_spans(self, run, start):
        folded = [_fold(character) for character in run]
        for i, character in enumerate(folded):
            if character in self._characters:
                yield start + i, start + i + 1
            if i + 1 < len(run) and character + folded[i + 1] in self._bigrams:
                yield start + i, start + i + 2

    def _joined_spans(self, word, start):
        # Parts and the runs of parts between joiners (the whole, its
        # sides, its domains), each checked as a token.
        bounds, position = [], 0
        for joiner in _JOINERS.finditer(word):
            bounds.append((position, joiner.start()))
            position = joiner.end()
        bounds.append((position, len(word)))
        longest = len(bounds) if len(bounds) <= 8 else 1
        for first in range(len(bounds)):
            for last in range(first, min(len(bounds), first + longest)):
                low, high = bounds[first][0], bounds[last][1]
                if self._matches(word[low:high]):
                    yield start + low, start + high
        if longest == 1 and self._matches(word):
            yield start, start + len(word)

    def __call__(self, text):
        if text is None:
            return None
        spans = sorted(self._spans(text))
        if not spans:
            return None
        pieces, position, merged = [], 0, []
        for low, high in spans:
            if merged and low <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        for low, high in merged:
            pieces.append(_escape(text[position:low]))
            pieces.append(f"<mark>{_escape(text[low:high])}</mark>")
            position = high
        pieces.append(_escape(text[position:]))
        return "".join(pieces)


def highlight_terms(text, languages=("en",)):
    """
    For SearchSnippet: a function that, given a subject or preview, returns
    it HTML-escaped with every word the query C{text} matches (folded and
    stemmed as the index is) wrapped in C{<mark></mark>}, or None when no
    word matches.
    """
    highlighter = _Highlighter(text, languages)
    if not highlighter:
        return lambda subject: None
    return highlighter
