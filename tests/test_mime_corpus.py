"""
Corpus tests for L{stalwart_tw.mail.mime}: tricky messages checked against JMAP
values worked out by hand from RFC 8621 section 4.1.

Each case NAME is a pair of files in tests/data/mime: NAME.eml holds the raw
message octets and NAME.json holds C{{"description": ..., "expected": {...}}},
an object mapping JMAP Email property names to their expected values.  One
test method, C{test_NAME}, is made per case.  A property is read from the
parsed view as follows:

  - C{size}: C{view.size};
  - messageId, inReplyTo, references, sender, from, to, cc, bcc, replyTo,
    subject, sentAt: C{view.convenience()[name]};
  - C{header:Name[:asForm][:all]}: C{view.header(Name, Form, all)}, Form
    defaulting to "Raw";
  - headers, bodyStructure, textBody, htmlBody, attachments: C{view.headers()},
    C{view.body_structure()}, C{view.text_body()}, C{view.html_body()},
    C{view.attachments()};
  - hasAttachment, preview: C{view.has_attachment}, C{view.preview};
  - bodyValues: C{view.body_value(partId)} for each expected key.

Before comparing, every "blobId" key is removed from actual body parts (blob
ids depend on storage).  Two things the RFC leaves open may be left out of an
expectation and are then not compared: the "size" of a multipart/* node in
bodyStructure, and keys of an EmailBodyValue (e.g. "value" where the RFC
allows a server heuristic).

The module under test is imported inside the tests, so this module always
loads and the tests fail (not skip) while the parser does not exist.
"""

import json
import os
import pprint
from base64 import b64decode

from twisted.trial import unittest

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mime")

CONVENIENCE = frozenset([
    "messageId", "inReplyTo", "references", "sender", "from", "to", "cc", "bcc",
    "replyTo", "subject", "sentAt"])

PART_LISTS = {
    "bodyStructure": "body_structure",
    "textBody": "text_body",
    "htmlBody": "html_body",
    "attachments": "attachments",
}

# The octets base64-encoded into the corpus attachments checked by the
# part_content tests (written independently of the .eml files' encoding).
PDF_BYTES = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\n"
             b"endobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n")
ALL_OCTETS = bytes(range(256))
PNG_BYTES = b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


def case_names():
    """The names of the corpus cases, one per .eml file, sorted."""
    return sorted(entry[:-len(".eml")] for entry in os.listdir(CORPUS) if entry.endswith(".eml"))


def load_case(name):
    with open(os.path.join(CORPUS, name + ".eml"), "rb") as f:
        raw = f.read()
    with open(os.path.join(CORPUS, name + ".json"), encoding="utf-8") as f:
        document = json.load(f)
    return raw, document["expected"]


def parse(raw):
    from stalwart_tw.mail.mime import parse as mime_parse
    return mime_parse(raw)


def header_arguments(prop):
    """Split C{header:Name[:asForm][:all]} into (Name, Form, all)."""
    pieces = prop.split(":")
    if len(pieces) < 2 or not pieces[1]:
        raise ValueError("bad header property %r" % (prop,))
    name, rest = pieces[1], pieces[2:]
    want_all = bool(rest) and rest[-1] == "all"
    if want_all:
        rest = rest[:-1]
    form = "Raw"
    if rest:
        if len(rest) != 1 or not rest[0].startswith("as"):
            raise ValueError("bad header property %r" % (prop,))
        form = rest[0][len("as"):]
    return name, form, want_all


def plain(value):
    """Tuples as lists, recursively, so JSON expectations compare equal."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def without_blob_ids(value):
    if isinstance(value, dict):
        return {key: without_blob_ids(item) for key, item in value.items() if key != "blobId"}
    if isinstance(value, list):
        return [without_blob_ids(item) for item in value]
    return value


def aligned_part(actual, expected):
    """Drop from actual the multipart "size" an expectation leaves out."""
    if isinstance(actual, list) and isinstance(expected, list) and len(actual) == len(expected):
        return [aligned_part(a, e) for a, e in zip(actual, expected)]
    if not (isinstance(actual, dict) and isinstance(expected, dict)):
        return actual
    actual = dict(actual)
    if str(expected.get("type", "")).startswith("multipart/") and "size" not in expected:
        actual.pop("size", None)
    if "subParts" in actual and "subParts" in expected:
        actual["subParts"] = aligned_part(actual["subParts"], expected["subParts"])
    return actual


def actual_value(view, prop, expected):
    if prop == "size":
        return view.size
    if prop in CONVENIENCE:
        return plain(view.convenience()[prop])
    if prop.startswith("header:"):
        name, form, want_all = header_arguments(prop)
        return plain(view.header(name, form, want_all))
    if prop == "headers":
        return plain(view.headers())
    if prop in PART_LISTS:
        parts = without_blob_ids(plain(getattr(view, PART_LISTS[prop])()))
        return aligned_part(parts, expected)
    if prop == "hasAttachment":
        return view.has_attachment
    if prop == "preview":
        return view.preview
    if prop == "bodyValues":
        values = {}
        for part_id, wanted in expected.items():
            got = plain(view.body_value(part_id))
            if isinstance(got, dict):
                got = {key: item for key, item in got.items() if key in wanted}
            values[part_id] = got
        return values
    raise KeyError("the corpus harness does not know the property %r" % (prop,))


class MimeCorpusTests(unittest.SynchronousTestCase):
    """
    One test per message in tests/data/mime, plus checks that decoded
    attachment octets survive intact.
    """

    def check_case(self, name):
        raw, expected = load_case(name)
        view = parse(raw)
        mismatches = []
        for prop in sorted(expected):
            want = expected[prop]
            try:
                got = actual_value(view, prop, want)
            except Exception as e:
                mismatches.append("%s: raised %r" % (prop, e))
                continue
            if got != want:
                mismatches.append("%s:\n  expected %s\n  actual   %s" % (
                    prop, pprint.pformat(want, width=100), pprint.pformat(got, width=100)))
        if mismatches:
            self.fail("%s.eml: %d of %d properties differ\n%s" % (
                name, len(mismatches), len(expected), "\n".join(mismatches)))

    def test_corpus_present(self):
        """The corpus has at least 20 cases and each .eml has its .json."""
        names = case_names()
        self.assertGreaterEqual(len(names), 20)
        for name in names:
            self.assertTrue(os.path.exists(os.path.join(CORPUS, name + ".json")), name)

    def test_part_content_pdf(self):
        """part_content of the base64 PDF attachment is the original octets."""
        raw, _ = load_case("mixed_pdf")
        self.assertEqual(parse(raw).part_content("2"), PDF_BYTES)

    def test_part_content_all_octets(self):
        """part_content of a base64 part holding all 256 octet values is exact."""
        raw, _ = load_case("rfc2231_filename")
        self.assertEqual(parse(raw).part_content("2"), ALL_OCTETS)

    def test_part_content_inline_image(self):
        """part_content of a base64 image nested in multipart/related is exact."""
        raw, _ = load_case("related_inline_image")
        self.assertEqual(parse(raw).part_content("3"), PNG_BYTES)


def _make_test(name):
    def test(self):
        self.check_case(name)
    test.__name__ = "test_" + name
    test.__doc__ = "%s.eml parses to the JMAP values in %s.json." % (name, name)
    return test


for _name in case_names():
    setattr(MimeCorpusTests, "test_" + _name, _make_test(_name))
del _name
