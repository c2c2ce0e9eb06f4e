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
from stalwart_tw.jmap.request import evaluate_pointer, parse_request
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
