"""
Property tests: whatever bytes arrive, decoding gives a result or the
precise error, never anything else.
"""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from stalwart_tw.jmap.errors import RequestError
from stalwart_tw.jmap.ids import decode_id, encode_id
from stalwart_tw.jmap.request import (
    _decode_exactly,
    decode_json,
    evaluate_pointer,
    parse_request,
)
from stalwart_tw.store.batch import WriteBatch
from stalwart_tw.store.errors import InvalidBatch

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)

# JSON text as clients may write it: members repeated or not, any spacing,
# escapes, integers past what I-JSON allows, digits inside strings.
_SPACE = st.sampled_from(["", " ", "\n  ", "\t", "\r\n"])
_KEY = st.sampled_from(["a", "b", 'q"', "s\\", "c:", "é", "1234567890123456789"])
_SCALAR = (
    st.integers(min_value=-(2**70), max_value=2**70).map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | st.sampled_from(["true", "false", "null", "NaN", '"\\ud800"', '"\\u003a"'])
    | st.text(max_size=6).map(lambda text: json.dumps(text, ensure_ascii=False))
)


def _text_of(children):
    def members(pairs, space):
        inner = ",".join(f"{space}{json.dumps(k)}{space}:{space}{v}" for k, v in pairs)
        return "{" + inner + space + "}"

    return st.lists(children, max_size=4).map(lambda items: "[" + ", ".join(items) + "]") | st.builds(
        members, st.lists(st.tuples(_KEY, children), max_size=4), _SPACE
    )


JSON_TEXT = st.recursive(_SCALAR, _text_of, max_leaves=12)


class DecodingPropertyTests(TestCase):
    """
    Decoders refuse garbage with their own error type only.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_batch_bytes(self, data):
        """Any bytes decode to a batch or raise InvalidBatch."""
        try:
            batch = WriteBatch.from_bytes(data)
        except InvalidBatch:
            return
        self.assertEqual(WriteBatch.from_bytes(batch.to_bytes()), batch)

    @settings(max_examples=300, deadline=None)
    @given(JSON)
    def test_request_documents(self, document):
        """Any JSON document is a Request or a RequestError, never a crash."""
        try:
            parse_request(json.dumps(document).encode(), {"urn:ietf:params:jmap:core"}, 16)
        except RequestError as error:
            self.assertIn(error.kind, {"notRequest", "unknownCapability", "limit"})

    @settings(max_examples=500, deadline=None)
    @given(JSON_TEXT)
    def test_fast_decoding_agrees_with_exact(self, text):
        """orjson's fast path reads every body as the exact I-JSON decoder does."""
        body = text.encode("utf-8", "surrogatepass")
        outcomes = []
        for decode in (decode_json, _decode_exactly):
            try:
                outcomes.append(("value", decode(body)))
            except RequestError as error:
                outcomes.append(("error", error.kind, str(error)))
        self.assertEqual(outcomes[0], outcomes[1])

    @settings(max_examples=200, deadline=None)
    @given(JSON, st.text(max_size=12))
    def test_pointers(self, document, path):
        """A pointer names a value or raises LookupError."""
        try:
            evaluate_pointer(document, path)
        except LookupError:
            pass

    @given(st.integers(min_value=0, max_value=2**63 - 1))
    def test_ids_round_trip(self, number):
        """Every id encodes to a short URL-safe string and decodes back."""
        text = encode_id("a", number)
        self.assertLessEqual(len(text), 14)
        self.assertEqual(decode_id("a", text), number)

    @given(st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyzA_ -", max_size=15))
    def test_ids_have_one_spelling(self, digits):
        """An id decodes only in the spelling its number encodes to (no leading zeros)."""
        text = "a" + digits
        number = decode_id("a", text)
        if number is not None:
            self.assertEqual(encode_id("a", number), text)
