"""
Tests for L{stalwart_tw.mail.mime}.
"""

import datetime

import msgpack
from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from stalwart_tw.mail import mime
from stalwart_tw.mail.mime import BuildError, MessageView, build, parse

BLOB = "ab" * 32
NOW = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def message(*lines, body=b""):
    """
    A message from header lines (str) and a body, CRLF line breaks.
    """
    head = "".join(line + "\r\n" for line in lines).encode("utf-8")
    return head + b"\r\n" + body


def multipart(boundary, parts, preamble=b"", epilogue=b"", close=True):
    """
    A multipart body: each part is (header lines, body bytes).
    """
    out = preamble
    for headers, body in parts:
        out += b"\r\n--" + boundary + b"\r\n"
        out += b"".join(h.encode("utf-8") + b"\r\n" for h in headers) + b"\r\n" + body
    if close:
        out += b"\r\n--" + boundary + b"--\r\n" + epilogue
    return out


def exercise(view):
    """
    Call every method of a view, as the server would.
    """
    view.headers()
    view.convenience()
    structure = view.body_structure(mime.BODY_PART_PROPERTIES)
    view.text_body()
    view.html_body()
    view.attachments()
    view.thread_keys()
    view.search_text()
    for form in mime.HEADER_FORMS:
        view.header("X-Any", form)
        view.header("X-Any", form, all=True, part_id="1")
    for part in view.attachments() + view.text_body():
        view.body_value(part["partId"], 7)
        view.part_content(part["partId"])
        view.part_type(part["partId"])
    assert isinstance(view.preview, str) and len(view.preview) <= 256
    assert isinstance(view.has_attachment, bool)
    return structure


SIMPLE = message(
    "From: Joe Bloggs <joe@example.com>",
    "To: jane@example.com",
    "Subject: Hello",
    "Date: Tue, 2 Jan 2024 03:04:05 +0100",
    "Message-ID: <m1@example.com>",
    body=b"Hi there,\r\nhow are you?\r\n",
)


class ParseRobustnessTests(SynchronousTestCase):
    """
    L{parse} accepts any octets.
    """

    def test_empty(self):
        """An empty message is one empty text/plain part with no headers."""
        view = parse(b"")
        self.assertEqual(view.size, 0)
        self.assertEqual(view.headers(), [])
        self.assertEqual(view.text_body(["partId", "type", "size"]),
                         [{"partId": "1", "type": "text/plain", "size": 0}])
        self.assertEqual(view.preview, "")
        self.assertFalse(view.has_attachment)
        exercise(view)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=2000))
    def test_random_bytes(self, raw):
        """Random octets never make parse() or any view method raise."""
        exercise(parse(raw))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from([
        b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: multipart/alternative;"
        b" boundary=b\r\n", b"Content-Type: text/html; charset=bogus\r\n",
        b"Content-Type: message/rfc822\r\n", b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n", b"Content-Disposition: attachment;"
        b" filename*0*=utf-8''%E2; filename*1*=%82%AC\r\n", b"\r\n", b"\n", b"--b\r\n", b"--b--\r\n",
        b"--b", b"SGVsbG8=\r\n", b"=C3=A9=\r\n", b"\xff\xfe text\r\n", b"Subject: =?utf-8?q?x?=\r\n",
        b" folded\r\n", b"From: a@b, (c) <d@e>, g: h;\r\n", b"Content-Type: image/png\r\n",
    ]), max_size=40))
    def test_random_mime(self, pieces):
        """Random assemblies of MIME fragments parse and answer consistently."""
        raw = b"".join(pieces)
        view = parse(raw)
        structure = exercise(view)
        self.assertEqual(structure, MessageView(raw, view.layout).body_structure(
            mime.BODY_PART_PROPERTIES))

    def test_garbage_without_headers(self):
        """Octets that do not start with a header field are all body."""
        raw = b"\x00\x01 this is not\r\na message: really\r\n"
        view = parse(raw)
        self.assertEqual(view.headers(), [])
        self.assertEqual(view.part_content("1"), raw)

    def test_truncated_multipart(self):
        """A multipart cut short keeps what arrived; the last part runs to the end."""
        raw = message("Content-Type: multipart/mixed; boundary=zz", body=multipart(b"zz", [
            ([], b"first"), (["Content-Type: text/plain"], b"seco"),
        ], close=False))
        view = parse(raw)
        self.assertEqual([view.body_value(p["partId"])["value"] for p in view.text_body()],
                         ["first", "seco"])

    def test_truncated_inside_headers(self):
        """A multipart cut inside a part's header block gives that part an empty body."""
        raw = message("Content-Type: multipart/mixed; boundary=zz",
                      body=b"--zz\r\nContent-Type: text/pl")
        view = parse(raw)
        self.assertEqual(view.body_structure(["type"])["subParts"], [{"type": "text/pl"}])
        self.assertEqual(view.part_content("1"), b"")

    def test_bare_lf(self):
        """Bare LF line breaks work like CRLF."""
        raw = (b"Subject: bare\nContent-Type: multipart/alternative; boundary=x\n\n--x\n"
               b"Content-Type: text/plain\n\nplain\n--x\nContent-Type: text/html\n\n"
               b"<b>html</b>\n--x--\n")
        view = parse(raw)
        self.assertEqual(view.header("Subject"), " bare")
        self.assertEqual(view.body_value("1")["value"], "plain")
        self.assertEqual(view.body_value("2")["value"], "<b>html</b>")
        self.assertEqual(view.html_body(["partId"]), [{"partId": "2"}])

    def test_eight_bit_headers(self):
        """Raw 8-bit header octets are read as UTF-8, else Latin-1; NULs dropped."""
        raw = (b"Subject: caf\xc3\xa9\r\nX-Latin: caf\xe9\x00!\r\n"
               b"X-Mixed: \xc3\xa9t\xe9\r\n\r\nbody")
        view = parse(raw)
        self.assertEqual(view.header("Subject", "Text"), "caf\u00e9")
        self.assertEqual(view.header("X-Latin"), " caf\u00e9!")
        self.assertEqual(view.header("X-Mixed"), " \u00e9t\u00e9")

    def test_boundary_prefix_is_not_delimiter(self):
        """A line that only starts with the boundary is not a delimiter."""
        raw = message("Content-Type: multipart/mixed; boundary=ab", body=multipart(b"ab", [
            ([], b"one\r\n--abc\r\nstill one"), ([], b"two"),
        ]))
        view = parse(raw)
        self.assertEqual(view.body_value("1")["value"], "one\n--abc\nstill one")
        self.assertEqual(view.body_value("2")["value"], "two")

    def test_delimiter_with_padding(self):
        """Transport padding after a delimiter is allowed (RFC 2046 5.1.1)."""
        raw = (b"Content-Type: multipart/mixed; boundary=ab\r\n\r\n--ab  \r\n\r\none\r\n"
               b"--ab-- \r\n")
        self.assertEqual(parse(raw).body_value("1")["value"], "one")

    def test_multipart_without_boundary(self):
        """A multipart without a boundary parameter is read as plain text."""
        raw = message("Content-Type: multipart/mixed", body=b"just text")
        view = parse(raw)
        self.assertEqual(view.body_structure(["partId", "type", "charset"]),
                         {"partId": "1", "type": "text/plain", "charset": "us-ascii"})
        self.assertEqual(view.preview, "just text")

    def test_boundary_never_found(self):
        """A multipart whose boundary never occurs is read as plain text."""
        raw = message("Content-Type: multipart/mixed; boundary=nothere", body=b"lost text")
        self.assertEqual(parse(raw).body_value("1")["value"], "lost text")

    def test_part_without_headers(self):
        """A body part that starts with its body has the default type."""
        raw = message("Content-Type: multipart/mixed; boundary=q",
                      body=b"--q\r\nno headers here\r\n--q--\r\n")
        view = parse(raw)
        self.assertEqual(view.body_structure(["type"])["subParts"], [{"type": "text/plain"}])
        self.assertEqual(view.body_value("1")["value"], "no headers here")

    def test_missing_blank_line(self):
        """A line that is not a header field ends the header block."""
        view = parse(b"Subject: x\r\nThis is body text\r\n")
        self.assertEqual(view.headers(), [{"name": "Subject", "value": " x"}])
        self.assertEqual(view.body_value("1")["value"], "This is body text\n")

    def test_mbox_from_line(self):
        """An mbox "From " line before the header fields is skipped."""
        view = parse(b"From joe@example.com Mon Jan  1 00:00:00 2024\r\n" + SIMPLE)
        self.assertEqual(view.header("Subject", "Text"), "Hello")

    def test_deep_nesting(self):
        """Nesting beyond MAX_DEPTH ends in one opaque part, without recursion errors."""
        depth = 500
        raw = b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(depth)
        ) + b"Content-Type: text/plain\r\n\r\ndeep\r\n"
        view = parse(raw)
        exercise(view)
        structure = view.body_structure(["type"])
        levels = 0
        while "subParts" in structure:
            structure = structure["subParts"][0]
            levels += 1
        self.assertEqual(levels, mime.MAX_DEPTH)
        self.assertEqual(structure, {"type": "application/octet-stream"})

    def test_many_parts(self):
        """More than MAX_PARTS parts are cut off into one opaque part."""
        count = mime.MAX_PARTS + 100
        raw = message("Content-Type: multipart/mixed; boundary=p",
                      body=b"--p\r\n\r\nx\r\n" * count + b"--p--\r\n")
        view = parse(raw)
        self.assertLessEqual(len(view.layout["p"]), mime.MAX_PARTS + 1)
        self.assertEqual(view.body_structure(["type"])["subParts"][-1],
                         {"type": "application/octet-stream"})
        exercise(view)

    def test_bad_content_type(self):
        """A syntactically invalid Content-Type means text/plain us-ascii (RFC 2045 5.2)."""
        view = parse(message("Content-Type: garbage; charset=utf-8", body=b"x"))
        self.assertEqual(view.body_structure(["type", "charset"]),
                         {"type": "text/plain", "charset": "us-ascii"})


class HeaderTests(SynchronousTestCase):
    """
    L{MessageView.headers} and L{MessageView.header} in every form.
    """

    def view(self, *lines):
        return parse(message(*lines, body=b"body"))

    def test_headers_raw_in_order(self):
        """headers() lists every field in order, values in Raw form."""
        view = self.view("B: 1", "a: two", " folded", "B:3")
        self.assertEqual(view.headers(), [
            {"name": "B", "value": " 1"},
            {"name": "a", "value": " two\r\n folded"},
            {"name": "B", "value": "3"},
        ])

    def test_last_instance_and_all(self):
        """header() gives the last instance; all=True gives every one, in order."""
        view = self.view("X-A: 1", "x-a: 2")
        self.assertEqual(view.header("X-a"), " 2")
        self.assertEqual(view.header("x-A", all=True), [" 1", " 2"])

    def test_absent(self):
        """An absent field is None, or [] with all."""
        view = self.view("Subject: x")
        self.assertIsNone(view.header("To", "Addresses"))
        self.assertEqual(view.header("To", "Addresses", all=True), [])

    def test_forbidden_forms(self):
        """Forms RFC 8621 4.1.2 forbids for a field raise ValueError."""
        view = self.view("From: a@b")
        for name, form in [("From", "Date"), ("Subject", "Addresses"), ("Date", "Text"),
                           ("Received", "Text"), ("List-Post", "MessageIds"),
                           ("Keywords", "Addresses"), ("To", "Nonsense")]:
            self.assertRaises(ValueError, view.header, name, form)
        for name, form in [("X-Custom", "Date"), ("List-Id", "Addresses"),
                           ("Resent-Reply-To", "Date"), ("Keywords", "Text"),
                           ("Received", "Raw"), ("List-Post", "URLs")]:
            view.header(name, form)

    def test_header_property_names(self):
        """parse_header_property splits names and checks order and forms."""
        self.assertEqual(mime.parse_header_property("header:To:asAddresses:all"),
                         ("To", "Addresses", True))
        self.assertEqual(mime.parse_header_property("header:X-Y"), ("X-Y", "Raw", False))
        for bad in ["header:", "header:To:all:asAddresses", "header:From:asDate",
                    "header:A b", "header:X:asFoo", "from", "header:X:all:more"]:
            self.assertRaises(ValueError, mime.parse_header_property, bad)

    def test_text(self):
        """asText unfolds (keeping the white space), drops leading space, decodes words."""
        view = self.view("Subject:  =?utf-8?q?caf=C3=A9?=", "  au lait  ")
        self.assertEqual(view.header("Subject", "Text"), "caf\u00e9  au lait  ")

    def test_encoded_words_adjacent(self):
        """White space between encoded words is dropped; split characters survive."""
        # "é" is C3 A9, split across two words.
        view = self.view("Subject: =?UTF-8?B?w6k=?= =?UTF-8?Q?x?= =?utf-8?Q?=C3?==?utf-8?Q?=A9?=")
        self.assertEqual(view.header("Subject", "Text"), "\u00e9x\u00e9")

    def test_encoded_words_rules(self):
        """Words glued to text, or in unknown charsets, are left alone."""
        view = self.view("Subject: a=?utf-8?q?b?= =?x-bogus?q?c?= =?iso-8859-1?q?caf=E9?=")
        self.assertEqual(view.header("Subject", "Text"),
                         "a=?utf-8?q?b?= =?x-bogus?q?c?= caf\u00e9")

    def test_encoded_words_controls_dropped(self):
        """Encoded NULs and control characters are dropped."""
        view = self.view("Subject: =?utf-8?q?a=00b=0Dc?=")
        self.assertEqual(view.header("Subject", "Text"), "abc")

    def test_text_nfc(self):
        """asText is in NFC."""
        view = self.view("Subject: =?utf-8?q?e=CC=81?=")
        self.assertEqual(view.header("Subject", "Text"), "\u00e9")

    def test_addresses_rfc_example(self):
        """The asAddresses and asGroupedAddresses examples of RFC 8621 4.1.2.3-4."""
        view = self.view(
            'To: "  James Smythe" <james@example.com>, Friends: jane@example.com, '
            "=?UTF-8?Q?John_Sm=C3=AEth?= <john@example.com>;")
        self.assertEqual(view.header("To", "Addresses"), [
            {"name": "James Smythe", "email": "james@example.com"},
            {"name": None, "email": "jane@example.com"},
            {"name": "John Sm\u00eeth", "email": "john@example.com"},
        ])
        self.assertEqual(view.header("To", "GroupedAddresses"), [
            {"name": None, "addresses": [
                {"name": "James Smythe", "email": "james@example.com"}]},
            {"name": "Friends", "addresses": [
                {"name": None, "email": "jane@example.com"},
                {"name": "John Sm\u00eeth", "email": "john@example.com"}]},
        ])

    def test_addresses_details(self):
        """Comments name bare addresses; quoted pairs decode; empty groups stay."""
        view = self.view(
            'Cc: jdoe@one.test (John Doe), "Q \\"x\\" \\\\ y" <q@x>, undisclosed-recipients:;, '
            "<@route.test:r@x.test>, Mary Smith <mary(home)@x.test>,,")
        self.assertEqual(view.header("Cc", "GroupedAddresses"), [
            {"name": None, "addresses": [
                {"name": "John Doe", "email": "jdoe@one.test"},
                {"name": 'Q "x" \\ y', "email": "q@x"}]},
            {"name": "undisclosed-recipients", "addresses": []},
            {"name": None, "addresses": [
                {"name": None, "email": "r@x.test"},
                {"name": "Mary Smith", "email": "mary@x.test"}]},
        ])

    def test_addresses_broken(self):
        """Broken address lists give what can be recovered."""
        view = self.view('To: John Doe john@x.test, "Unclosed <u@x.test>, <a@b', "X: bob")
        self.assertEqual(view.header("To", "Addresses")[0],
                         {"name": "John Doe", "email": "john@x.test"})
        self.assertEqual(view.header("X", "Addresses"), [{"name": None, "email": "bob"}])
        self.assertEqual(view.header("X-None", "Addresses"), None)

    def test_message_ids(self):
        """asMessageIds strips CFWS and brackets; null when not parseable."""
        view = self.view("References: <a@b> (comment <c@d>)\r\n\t<e@f>", "In-Reply-To: x@y",
                         "Message-ID: not an id", "X-Empty:")
        self.assertEqual(view.header("References", "MessageIds"), ["a@b", "e@f"])
        self.assertEqual(view.header("In-Reply-To", "MessageIds"), ["x@y"])
        self.assertIsNone(view.header("Message-ID", "MessageIds"))
        self.assertIsNone(view.header("X-Empty", "MessageIds"))

    def test_dates(self):
        """asDate is RFC 3339 with the original offset; null when not parseable."""
        cases = {
            "Tue, 2 Jan 2024 03:04:05 +0130": "2024-01-02T03:04:05+01:30",
            "2 Jan 2024 03:04 -0800 (PST)": "2024-01-02T03:04:00-08:00",
            "Tue, 02 Jan 24 03:04:05 EST": "2024-01-02T03:04:05-05:00",
            "Sat, 1 Jan 99 00:00:00 GMT": "1999-01-01T00:00:00Z",
            "Fri, 31 Dec 2021 23:59:60 +0000": "2021-12-31T23:59:59Z",
            "Mon Jan  1 10:00:00 2024": "2024-01-01T10:00:00Z",
            "31 Feb 2024 00:00:00 +0000": None,
            "yesterday": None,
            "Tue, 2 Jan 2024 25:00:00 +0000": None,
        }
        for text, expected in cases.items():
            self.assertEqual(self.view("Date: " + text).header("Date", "Date"), expected, text)

    def test_urls(self):
        """asURLs follows RFC 2369: brackets and comments removed; null when none."""
        view = self.view("List-Post: <mailto:l@x.test> (post here),\r\n <http://x.test/\r\n a>",
                         "List-Help: NO (not allowed)")
        self.assertEqual(view.header("List-Post", "URLs"), ["mailto:l@x.test", "http://x.test/a"])
        self.assertIsNone(view.header("List-Help", "URLs"))

    def test_part_headers(self):
        """headers and header() read a body part's own header block."""
        raw = message("Content-Type: multipart/mixed; boundary=b", body=multipart(b"b", [
            (["Content-Type: text/plain", "X-Part: yes"], b"x")]))
        view = parse(raw)
        self.assertEqual(view.headers("1"), [{"name": "Content-Type", "value": " text/plain"},
                                             {"name": "X-Part", "value": " yes"}])
        self.assertEqual(view.header("X-Part", "Text", part_id="1"), "yes")
        self.assertIsNone(view.header("X-Part", "Text", part_id="9"))
        self.assertEqual(view.headers("9"), [])


class ConvenienceTests(SynchronousTestCase):
    """
    L{MessageView.convenience}.
    """

    def test_values(self):
        """Each convenience property equals its header form."""
        view = parse(message(
            "From: Joe <joe@x.test>", "Sender: s@x.test", "Reply-To: r@x.test", "To: t@x.test",
            "Cc: c@x.test", "Bcc: b@x.test", "Subject: =?utf-8?q?Hi_there?=",
            "Date: Tue, 2 Jan 2024 03:04:05 +0100", "Message-ID: <id@x.test>",
            "In-Reply-To: <p@x.test>", "References: <o@x.test> <p@x.test>"))
        self.assertEqual(view.convenience(), {
            "messageId": ["id@x.test"], "inReplyTo": ["p@x.test"],
            "references": ["o@x.test", "p@x.test"],
            "sender": [{"name": None, "email": "s@x.test"}],
            "from": [{"name": "Joe", "email": "joe@x.test"}],
            "to": [{"name": None, "email": "t@x.test"}],
            "cc": [{"name": None, "email": "c@x.test"}],
            "bcc": [{"name": None, "email": "b@x.test"}],
            "replyTo": [{"name": None, "email": "r@x.test"}],
            "subject": "Hi there", "sentAt": "2024-01-02T03:04:05+01:00",
        })

    def test_missing(self):
        """Every convenience property is null when its field is absent."""
        self.assertEqual(set(parse(b"").convenience().values()), {None})


# The example structure of RFC 8621 4.1.4 (parts A to K).
def rfc_example():
    def leaf(media, letter, disposition=None):
        headers = ["Content-Type: " + media]
        if disposition:
            headers.append("Content-Disposition: " + disposition)
        return headers, letter.encode("ascii")

    def node(media, boundary, parts):
        return (["Content-Type: %s; boundary=%s" % (media, boundary)],
                multipart(boundary.encode("ascii"), parts))

    inner_mixed = node("multipart/mixed", "m3", [
        leaf("text/plain", "B", "inline"), leaf("image/jpeg", "C", "inline"),
        leaf("text/plain", "D", "inline")])
    related = node("multipart/related", "r1", [leaf("text/html", "E"), leaf("image/jpeg", "F")])
    alternative = node("multipart/alternative", "a1", [inner_mixed, related])
    mixed2 = node("multipart/mixed", "m2", [
        alternative, leaf("image/jpeg", "G", "attachment"), leaf("application/x-excel", "H"),
        leaf("message/rfc822", "J")])
    return message("Content-Type: multipart/mixed; boundary=m1", body=multipart(b"m1", [
        leaf("text/plain", "A", "inline"), mixed2, leaf("text/plain", "K", "inline")]))


class BodyListTests(SynchronousTestCase):
    """
    textBody, htmlBody, attachments, hasAttachment and preview.
    """

    def letters(self, view, parts):
        return "".join(view.body_value(part["partId"])["value"] for part in parts)

    def test_rfc_example(self):
        """The decomposition example of RFC 8621 4.1.4."""
        view = parse(rfc_example())
        self.assertEqual(self.letters(view, view.text_body()), "ABCDK")
        self.assertEqual(self.letters(view, view.html_body()), "AEK")
        self.assertEqual(self.letters(view, view.attachments()), "CFGHJ")
        self.assertTrue(view.has_attachment)

    def test_html_only_alternative(self):
        """An alternative with only HTML puts the HTML in textBody too."""
        raw = message("Content-Type: multipart/alternative; boundary=a", body=multipart(b"a", [
            (["Content-Type: text/html"], b"<p>Only <i>html</i></p>")]))
        view = parse(raw)
        self.assertEqual(view.text_body(["partId"]), [{"partId": "1"}])
        self.assertEqual(view.html_body(["partId"]), [{"partId": "1"}])
        self.assertEqual(view.preview, "Only html")

    def test_named_text_is_attachment(self):
        """A named text part after the first is an attachment; inline ones don't count."""
        raw = message("Content-Type: multipart/mixed; boundary=a", body=multipart(b"a", [
            ([], b"body"),
            (["Content-Type: text/plain; name=notes.txt"], b"notes"),
            (["Content-Type: image/png", "Content-Disposition: inline"], b"png")]))
        view = parse(raw)
        self.assertEqual(self.letters(view, view.text_body()), "bodypng")
        self.assertEqual(self.letters(view, view.attachments()), "notes")
        self.assertTrue(view.has_attachment)

    def test_inline_only(self):
        """Attachments that are all Content-Disposition: inline leave hasAttachment false."""
        raw = message("Content-Type: multipart/related; boundary=a", body=multipart(b"a", [
            (["Content-Type: text/html"], b"<img src=cid:i>"),
            (["Content-Type: image/png", "Content-Disposition: inline", "Content-ID: <i>"],
             b"png")]))
        view = parse(raw)
        self.assertEqual(view.attachments(["cid"]), [{"cid": "i"}])
        self.assertFalse(view.has_attachment)

    def test_preview(self):
        """preview collapses white space and stops at 256 characters."""
        view = parse(message(body=b"  Hello\r\n\r\n\tworld  " + b"x " * 300))
        self.assertTrue(view.preview.startswith("Hello world x x"))
        self.assertEqual(len(view.preview), 255)  # trailing space trimmed
        html = parse(message("Content-Type: text/html", body=(
            b"<html><head><title>T</title><style>p{}</style></head><body>"
            b"<p>A&amp;B</p><script>x()</script><img alt='pic'></body></html>")))
        self.assertEqual(html.preview, "A&B pic")


class BodyPartTests(SynchronousTestCase):
    """
    EmailBodyPart properties.
    """

    def test_single_part_defaults(self):
        """A message without Content-Type is one text/plain us-ascii part."""
        view = MessageView(SIMPLE, parse(SIMPLE).layout, BLOB)
        self.assertEqual(view.body_structure(), {
            "partId": "1", "blobId": BLOB + "_1", "size": 25, "name": None,
            "type": "text/plain", "charset": "us-ascii", "disposition": None, "cid": None,
            "language": None, "location": None,
        })

    def test_properties(self):
        """type, charset, disposition, name, cid, language and location are read."""
        raw = message("Content-Type: multipart/mixed; boundary=a", body=multipart(b"a", [
            (['Content-Type: Image/PNG; charset="X"', "Content-Disposition: ATTACHMENT;",
              "\tfilename*0*=utf-8''%E2%82%AC; filename*1=\" rates.png\"",
              "Content-ID: < cid1@x >", "Content-Language: en, (comment) fr",
              "Content-Location: http://x.test/\r\n a.png",
              "Content-Transfer-Encoding: base64"], b"aGVs\r\nbG8=\r\n"),
            (['Content-Type: application/pdf; name="=?utf-8?q?r=C3=A9sum=C3=A9?=.pdf"'], b"%")]))
        view = parse(raw)
        first, second = view.attachments(mime.BODY_PART_PROPERTIES)
        self.assertEqual(
            {k: first[k] for k in ("type", "charset", "disposition", "name", "cid", "language",
                                   "location", "size", "partId", "subParts")},
            {"type": "image/png", "charset": "X", "disposition": "attachment",
             "name": "\u20ac rates.png", "cid": "cid1@x", "language": ["en", "fr"],
             "location": "http://x.test/a.png", "size": 5, "partId": "1", "subParts": None})
        self.assertEqual(first["headers"][0], {"name": "Content-Type",
                                               "value": ' Image/PNG; charset="X"'})
        self.assertEqual(second["name"], "r\u00e9sum\u00e9.pdf")
        self.assertIsNone(second["charset"])

    def test_header_properties(self):
        """header:* body properties are answered per part."""
        raw = message("Content-Type: multipart/mixed; boundary=a", "X-Top: t",
                      body=multipart(b"a", [(["X-Part: =?utf-8?q?p?="], b"x")]))
        structure = parse(raw).body_structure(["partId", "header:X-Part:asText",
                                               "header:x-top"])
        self.assertEqual(structure, {
            "partId": None, "header:X-Part:asText": None, "header:x-top": " t",
            "subParts": [{"partId": "1", "header:X-Part:asText": "p", "header:x-top": None}]})

    def test_multipart_nulls(self):
        """Multiparts have null partId and blobId, and subParts."""
        view = MessageView(rfc_example(), parse(rfc_example()).layout, BLOB)
        structure = view.body_structure()
        self.assertIsNone(structure["partId"])
        self.assertIsNone(structure["blobId"])
        self.assertEqual(len(structure["subParts"]), 3)
        self.assertEqual([p["partId"] for p in view.text_body()], ["1", "2", "3", "4", "10"])

    def test_digest_default(self):
        """Parts of a multipart/digest default to message/rfc822."""
        raw = message("Content-Type: multipart/digest; boundary=d", body=multipart(b"d", [
            ([], b"Subject: inner\r\n\r\ninside")]))
        view = parse(raw)
        self.assertEqual(view.attachments(["type", "charset"]),
                         [{"type": "message/rfc822", "charset": None}])

    def test_attached_message(self):
        """message/rfc822 is a leaf whose content parses as its own message."""
        inner = message("Content-Type: multipart/mixed; boundary=i", "Subject: inner",
                        body=multipart(b"i", [([], b"in1"), ([], b"in2")]))
        raw = message("Content-Type: multipart/mixed; boundary=o", body=multipart(b"o", [
            ([], b"outer"), (["Content-Type: message/rfc822"], inner)]))
        view = parse(raw)
        self.assertEqual(view.attachments(["partId", "type"]),
                         [{"partId": "2", "type": "message/rfc822"}])
        self.assertEqual(view.part_type("2"), "message/rfc822")
        attached = parse(view.part_content("2"))
        self.assertEqual(attached.header("Subject", "Text"), "inner")
        self.assertEqual([attached.body_value(p["partId"])["value"]
                          for p in attached.text_body()], ["in1", "in2"])


class ContentTests(SynchronousTestCase):
    """
    body_value and part_content.
    """

    def part(self, headers, body):
        return parse(message(*headers, body=body))

    def test_charsets(self):
        """Charsets are decoded; unknown ones are flagged isEncodingProblem."""
        cases = [
            (["Content-Type: text/plain; charset=iso-8859-1"], b"caf\xe9", "caf\u00e9", False),
            (["Content-Type: text/plain; charset=windows-1252"], b"\x93q\x94", "\u201cq\u201d",
             False),
            (["Content-Type: text/plain; charset=x-bogus"], b"caf\xc3\xa9", "caf\u00e9", True),
            (["Content-Type: text/plain; charset=utf-8"], b"bad \xff", "bad \ufffd", True),
            ([], b"utf8 \xc3\xa9", "utf8 \u00e9", False),
            (["Content-Type: text/plain; charset=gb2312"], "\u4e2d".encode("gb2312"),
             "\u4e2d", False),
        ]
        for headers, body, value, problem in cases:
            self.assertEqual(self.part(headers, body).body_value("1"),
                             {"value": value, "isEncodingProblem": problem,
                              "isTruncated": False}, headers)

    def test_crlf_to_lf(self):
        """CRLF becomes LF in values."""
        self.assertEqual(self.part([], b"a\r\nb\r\n").body_value("1")["value"], "a\nb\n")

    def test_truncation(self):
        """max_bytes counts UTF-8 octets and never splits a character."""
        view = self.part(["Content-Type: text/plain; charset=utf-8"], "\u00e9\u00e9\u00e9".encode())
        self.assertEqual(view.body_value("1", 3), {"value": "\u00e9", "isEncodingProblem": False,
                                                   "isTruncated": True})
        self.assertEqual(view.body_value("1", 6)["isTruncated"], False)
        self.assertEqual(view.body_value("1", 0)["value"], "\u00e9\u00e9\u00e9")

    def test_html_truncation(self):
        """HTML values are not cut inside a tag."""
        view = self.part(["Content-Type: text/html"], b'<p>Hi <a href="https://x.test">x</a>')
        self.assertEqual(view.body_value("1", 20)["value"], "<p>Hi ")

    def test_large_prefix(self):
        """A short value of a large encoded part equals the start of the full value."""
        text = ("line \u00e9\r\n" * 20000).encode("utf-8")
        for encoding, body in [("base64", mime._base64_body(text)),
                               ("quoted-printable", mime._encode_text_value(text)[1]),
                               ("8bit", text)]:
            view = self.part(["Content-Type: text/plain; charset=utf-8",
                              "Content-Transfer-Encoding: " + encoding], body)
            full = view.body_value("1")["value"]
            for limit in (1, 100, 1001, 50000):
                short = view.body_value("1", limit)
                self.assertTrue(short["isTruncated"])
                self.assertFalse(short["isEncodingProblem"])
                self.assertTrue(full.startswith(short["value"]))
                self.assertGreaterEqual(len(short["value"].encode("utf-8")), limit - 3)

    def test_no_such_part(self):
        """Unknown parts, and multiparts, have no value or content."""
        view = parse(rfc_example())
        for part_id in ("0", "99", None, "x"):
            self.assertIsNone(view.body_value(part_id))
            self.assertIsNone(view.part_content(part_id))
            self.assertIsNone(view.part_type(part_id))

    def test_unknown_transfer_encoding(self):
        """An unknown Content-Transfer-Encoding leaves the octets as they are, flagged."""
        view = self.part(["Content-Transfer-Encoding: x-made-up"], b"as is")
        self.assertEqual(view.body_value("1"), {"value": "as is", "isEncodingProblem": True,
                                                "isTruncated": False})
        self.assertEqual(view.part_content("1"), b"as is")

    def test_lenient_base64(self):
        """base64 with junk, missing padding or padded chunks still decodes."""
        for body, content in [(b"SGVs!!bG8\r\n", b"Hello"), (b"SGVsbG8=SGk=", b"HelloHi"),
                              (b"SGVsbA", b"Hell"), (b"S", b""), (b"====", b"")]:
            view = self.part(["Content-Transfer-Encoding: BASE64"], body)
            self.assertEqual(view.part_content("1"), content, body)
            self.assertEqual(view.text_body(["size"]), [{"size": len(content)}])

    def test_quoted_printable(self):
        """quoted-printable decodes soft breaks and escapes, keeping bad escapes."""
        view = self.part(["Content-Transfer-Encoding: quoted-printable",
                          "Content-Type: text/plain; charset=utf-8"], b"caf=C3=A9 =\r\nau=ZZ")
        self.assertEqual(view.part_content("1"), b"caf\xc3\xa9 au=ZZ")
        self.assertEqual(view.text_body(["size"]), [{"size": 11}])

    def test_quoted_printable_trailing_space(self):
        """Unencoded trailing white space is deleted (RFC 2045 6.7); =20 stays."""
        view = self.part(["Content-Transfer-Encoding: quoted-printable"],
                         b"a  \r\nb=20\t\r\nc= \r\nd \t")
        self.assertEqual(view.part_content("1"), b"a\r\nb \r\ncd")


class KeysTests(SynchronousTestCase):
    """
    thread_keys and search_text.
    """

    def test_thread_keys(self):
        """Own ids, referenced ids without repeats, and the base subject."""
        view = parse(message("Message-ID: <me@x>", "In-Reply-To: <p@x>",
                             "References: <o@x> <p@x>",
                             "Subject: Re: [list] FWD: Re[2]:  The   Plan (fwd)"))
        self.assertEqual(view.thread_keys(), (["me@x"], ["p@x", "o@x"], "the plan"))

    def test_base_subject(self):
        """RFC 5256 base subjects, with common non-English prefixes."""
        for subject, base in [("[Fwd: Re: Hello]", "hello"), ("AW: WG: Hallo", "hallo"),
                              ("[list]", "[list]"), ("Re:", ""), ("Hello (fwd) (FWD)", "hello"),
                              ("Réponse", "réponse")]:
            self.assertEqual(mime.base_subject(subject), base, subject)

    def test_search_text(self):
        """search_text gives header text, body text (HTML as text) and file names."""
        raw = message("From: Joe <joe@x.test>", "To: a@x.test, B <b@x.test>",
                      "Subject: =?utf-8?q?Caf=C3=A9?=",
                      "Content-Type: multipart/mixed; boundary=s", body=multipart(b"s", [
                          (["Content-Type: text/html"], b"<p>Hello <b>there</b></p>"),
                          (["Content-Type: application/pdf; name=a.pdf"], b"%"),
                      ]))
        self.assertEqual(parse(raw).search_text(), {
            "subject": "Caf\u00e9", "from": "Joe joe@x.test", "to": "a@x.test, B b@x.test",
            "cc": "", "bcc": "", "body": "Hello there", "attachments": "a.pdf"})


class LayoutTests(SynchronousTestCase):
    """
    The stored layout.
    """

    def answers(self, view):
        props = mime.BODY_PART_PROPERTIES + ["header:Subject:asText"]
        return (view.size, view.headers(), view.convenience(), view.body_structure(props),
                view.text_body(props), view.html_body(props), view.attachments(props),
                view.preview, view.has_attachment, view.thread_keys(), view.search_text(),
                [view.body_value(str(i), 2) for i in range(1, 12)],
                [view.part_content(str(i)) for i in range(1, 12)])

    def test_msgpack_round_trip(self):
        """A layout through msgpack gives the same answers."""
        for raw in (SIMPLE, rfc_example(), b"", b"\xff" * 10):
            view = MessageView(raw, parse(raw).layout, BLOB)
            packed = msgpack.packb(view.layout)
            again = MessageView(raw, msgpack.unpackb(packed), BLOB)
            self.assertEqual(self.answers(again), self.answers(view))

    def test_compact(self):
        """The layout holds offsets, not contents."""
        raw = message("Content-Type: image/png", body=b"x" * 100000)
        self.assertLess(len(msgpack.packb(parse(raw).layout)), 80)
        self.assertEqual(parse(raw).layout["v"], mime.LAYOUT_VERSION)

    def test_other_version(self):
        """A layout of another version, or not fitting the octets, is computed again."""
        good = parse(rfc_example()).layout
        for layout in ({"v": 0, "p": good["p"]}, {}, None, {"v": 1, "p": [[0, 0, 10 ** 9]]}):
            view = MessageView(rfc_example(), layout)
            self.assertEqual(view.layout, good)


class BlobIdTests(SynchronousTestCase):
    """
    Blob ids of parts.
    """

    def test_round_trip(self):
        """part_blob_id and split_part_blob_id invert each other."""
        self.assertEqual(mime.part_blob_id(BLOB, "3"), BLOB + "_3")
        self.assertEqual(mime.split_part_blob_id(BLOB + "_3"), (BLOB, "3"))
        self.assertEqual(mime.split_part_blob_id(BLOB + "_3_12"), (BLOB + "_3", "12"))

    def test_not_part_ids(self):
        """Other strings are not part blob ids."""
        for blob_id in (BLOB, "_1", BLOB + "_", BLOB + "_01", BLOB + "_x", None, 3):
            self.assertIsNone(mime.split_part_blob_id(blob_id))


BLOBS = {"png": b"\x89PNG\r\n\x1a\n\x00data", "pdf": b"%PDF-1.4 \xff", "eml": SIMPLE,
         "txt": "plain caf\u00e9\r\n".encode("utf-8")}


def built(properties):
    return parse(build(properties, BLOBS.get, "example.org", NOW))


class BuildTests(SynchronousTestCase):
    """
    L{build}: messages for Email/set create, checked by parsing them back.
    """

    def test_envelope_round_trip(self):
        """Convenience properties come back as given."""
        given = {
            "from": [{"name": "J\u00f6e \"Q\" Bloggs", "email": "joe@x.test"}],
            "sender": [{"name": None, "email": "s@x.test"}],
            "to": [{"name": "A, B", "email": "ab@x.test"}, {"name": None, "email": "c@x.test"}],
            "cc": [{"name": "=?not?q?a_word?=", "email": "d@x.test"}],
            "bcc": [{"name": "\u00c9mile " * 20, "email": "e@x.test"}],
            "replyTo": [{"name": "R", "email": "r@x.test"}],
            "subject": "Caf\u00e9 " + "long words " * 20 + "\u4e2d\u6587",
            "sentAt": "2024-05-06T07:08:09-04:30",
            "messageId": ["m@x.test"], "inReplyTo": ["p@x.test"],
            "references": ["o@x.test", "p@x.test"],
        }
        properties = dict(given, textBody=[{"partId": "t"}], bodyValues={"t": {"value": "hi"}})
        raw = build(properties, BLOBS.get, "example.org", NOW)
        for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
            self.assertLessEqual(len(line), 78, line)
        view = parse(raw)
        expected = dict(given)
        expected["bcc"] = [{"name": ("\u00c9mile " * 20).strip(), "email": "e@x.test"}]
        expected["subject"] = given["subject"].strip()
        self.assertEqual(view.convenience(), expected)
        self.assertEqual(view.header("MIME-Version", "Text"), "1.0")

    def test_defaults(self):
        """Date comes from now and a Message-ID is generated when not given."""
        view = built({})
        self.assertEqual(view.convenience()["sentAt"], "2024-01-02T03:04:05Z")
        (message_id,) = view.convenience()["messageId"]
        self.assertTrue(message_id.endswith("@example.org"))
        self.assertNotEqual(built({}).convenience()["messageId"], [message_id])
        offset = datetime.timezone(datetime.timedelta(hours=2))
        raw = build({}, BLOBS.get, "d", datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=offset))
        self.assertEqual(parse(raw).convenience()["sentAt"], "2024-01-02T03:04:05+02:00")
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))

    def test_header_forms(self):
        """header:* properties in every form come back as given."""
        given = {
            "header:X-Raw": " raw\r\n folded",
            "header:X-Text:asText": "t\u00e9xt",
            "header:X-Addr:asAddresses": [{"name": "N", "email": "n@x.test"}],
            "header:X-Groups:asGroupedAddresses": [
                {"name": None, "addresses": [{"name": None, "email": "a@x.test"}]},
                {"name": "G\u00e9", "addresses": [{"name": "B", "email": "b@x.test"}]},
                {"name": "Empty", "addresses": []}],
            "header:X-Ids:asMessageIds": ["a@b", "c@d"],
            "header:X-Date:asDate": "2020-02-29T12:00:00Z",
            "header:List-Post:asURLs": ["mailto:l@x.test", "https://x.test/p"],
            "header:X-Many:asText:all": ["one", "two"],
            "header:Comments:asText": "c",
        }
        view = built(given)
        for prop, value in given.items():
            name, form, is_all = mime.parse_header_property(prop)
            self.assertEqual(view.header(name, form, is_all), value, prop)

    def test_text_and_html(self):
        """textBody and htmlBody make a multipart/alternative."""
        view = built({"textBody": [{"partId": "t", "type": "text/plain"}],
                      "htmlBody": [{"partId": "h"}],
                      "bodyValues": {"t": {"value": "Hello\nw\u00f6rld " + "x" * 1200},
                                     "h": {"value": "<p>\u4e2d\u6587\u4e2d\u6587</p>",
                                           "isTruncated": False}}})
        self.assertEqual(view.body_structure(["type"])["type"], "multipart/alternative")
        (text,) = view.text_body(["partId", "type", "charset"])
        (html,) = view.html_body(["partId", "type", "charset"])
        self.assertEqual((text["type"], html["type"]), ("text/plain", "text/html"))
        self.assertEqual(view.body_value(text["partId"])["value"],
                         "Hello\nw\u00f6rld " + "x" * 1200)
        self.assertEqual(view.body_value(html["partId"])["value"],
                         "<p>\u4e2d\u6587\u4e2d\u6587</p>")
        self.assertEqual(view.attachments(), [])
        self.assertFalse(view.has_attachment)

    def test_attachments(self):
        """Attachments go in a multipart/mixed; cid parts in a multipart/related."""
        view = built({
            "textBody": [{"partId": "t"}], "htmlBody": [{"partId": "h"}],
            "bodyValues": {"t": {"value": "text"}, "h": {"value": "<img src=cid:c1>"}},
            "attachments": [
                {"blobId": "png", "type": "image/png", "cid": "c1", "name": "p.png"},
                {"blobId": "pdf", "type": "application/pdf",
                 "name": "\u20ac " + "long name " * 10 + ".pdf", "size": 3},
                {"blobId": "eml", "type": "message/rfc822"},
                {"blobId": "txt", "type": "text/plain", "language": ["fr"],
                 "location": "http://x.test/t"}]})
        self.assertEqual(view.body_structure(["type"]), {"type": "multipart/mixed", "subParts": [
            {"type": "multipart/alternative", "subParts": [
                {"type": "text/plain"},
                {"type": "multipart/related", "subParts": [
                    {"type": "text/html"}, {"type": "image/png"}]}]},
            {"type": "application/pdf"}, {"type": "message/rfc822"}, {"type": "text/plain"}]})
        props = ["partId", "type", "name", "disposition", "cid", "charset", "language",
                 "location", "size"]
        png, pdf, eml, txt = view.attachments(props)
        self.assertEqual((png["cid"], png["disposition"], png["name"]), ("c1", "inline", "p.png"))
        self.assertEqual(pdf["name"], "\u20ac " + "long name " * 10 + ".pdf")
        self.assertEqual(pdf["disposition"], "attachment")
        self.assertEqual(txt["charset"], "utf-8")
        self.assertEqual((txt["language"], txt["location"]), (["fr"], "http://x.test/t"))
        for part, key in ((png, "png"), (pdf, "pdf"), (eml, "eml"), (txt, "txt")):
            self.assertEqual(view.part_content(part["partId"]), BLOBS[key], key)
            self.assertEqual(part["size"], len(BLOBS[key]))
        self.assertTrue(view.has_attachment)

    def test_body_structure(self):
        """A bodyStructure is written as given, header:* properties included."""
        view = built({
            "bodyStructure": {"type": "multipart/mixed", "header:X-Root:asText": "r",
                              "subParts": [
                                  {"partId": "a", "header:X-Part": " p"},
                                  {"blobId": "pdf", "type": "application/pdf",
                                   "disposition": "attachment", "name": "a.pdf"},
                                  {"type": "multipart/alternative", "subParts": [
                                      {"partId": "a", "type": "text/plain"}]}]},
            "bodyValues": {"a": {"value": "A"}}})
        self.assertEqual(view.header("X-Root", "Text"), "r")
        self.assertEqual(view.header("X-Part", part_id="1"), " p")
        self.assertEqual(view.body_structure(["type", "partId"]), {
            "type": "multipart/mixed", "partId": None, "subParts": [
                {"type": "text/plain", "partId": "1"},
                {"type": "application/pdf", "partId": "2"},
                {"type": "multipart/alternative", "partId": None, "subParts": [
                    {"type": "text/plain", "partId": "3"}]}]})
        self.assertEqual(view.part_content("2"), BLOBS["pdf"])

    def test_explicit_content_type(self):
        """A header:Content-Type on a part replaces the generated one."""
        view = built({"bodyStructure": {"blobId": "txt",
                                        "header:Content-Type": " text/x-custom; a=b"}})
        self.assertEqual(view.body_structure(["type"]), {"type": "text/x-custom"})
        self.assertEqual(view.header("Content-Type", all=True), [" text/x-custom; a=b"])

    def assertBuildError(self, properties, bad):
        error = self.assertRaises(BuildError, build, properties, BLOBS.get, "d", NOW)
        self.assertEqual(error.properties, bad)
        self.assertTrue(error.description)
        return error

    def test_errors(self):
        """What RFC 8621 4.6 forbids raises BuildError naming the properties."""
        value = {"bodyValues": {"t": {"value": "x"}}}
        cases = [
            ({"headers": [{"name": "X", "value": "y"}]}, ["headers"]),
            ({"from": [], "header:From:asAddresses": []}, ["from", "header:From:asAddresses"]),
            ({"header:subject": " a", "header:Subject:asText": "b"},
             ["header:subject", "header:Subject:asText"]),
            ({"header:From:asDate": "2020-01-01T00:00:00Z"}, ["header:From:asDate"]),
            ({"header:Content-Type": " text/plain"}, ["header:Content-Type"]),
            (dict(value, bodyStructure={"partId": "t"}, textBody=[{"partId": "t"}]),
             ["bodyStructure", "textBody"]),
            ({"textBody": [{"partId": "missing"}]}, ["textBody", "bodyValues"]),
            (dict(value, textBody=[{"partId": "t", "type": "text/html"}]), ["textBody"]),
            (dict(value, htmlBody=[{"partId": "t"}, {"partId": "t"}]), ["htmlBody"]),
            (dict(value, textBody=[{"partId": "t", "blobId": "png"}]), ["textBody"]),
            (dict(value, textBody=[{"partId": "t", "charset": "utf-8"}]), ["textBody"]),
            (dict(value, textBody=[{"partId": "t", "size": 1}]), ["textBody"]),
            (dict(value, attachments=[{"blobId": "png", "header:Content-Transfer-Encoding":
                                       " base64"}]), ["attachments"]),
            (dict(value, attachments=[{"blobId": "png", "type": "image/png",
                                       "header:Content-Type": " image/gif"}]), ["attachments"]),
            (dict(value, attachments=[{"blobId": "png", "headers": [{"name": "a"}]}]),
             ["attachments"]),
            ({"bodyValues": {"t": {"value": "x", "isTruncated": True}}}, ["bodyValues"]),
            ({"bodyValues": {"t": {"value": "x", "isEncodingProblem": True}}}, ["bodyValues"]),
            (dict(value, subject="s", bodyStructure={"partId": "t", "header:Subject": " s"}),
             ["bodyStructure"]),
            ({"bodyStructure": {"type": "multipart/mixed"}}, ["bodyStructure"]),
            ({"bodyStructure": {"type": "text/plain", "subParts": []}}, ["bodyStructure"]),
            ({"sentAt": "yesterday"}, ["sentAt"]),
            ({"messageId": ["a b"]}, ["messageId"]),
            ({"from": [{"name": "x"}]}, ["from"]),
            ({"header:X-Raw": " a\r\nInjected: yes"}, ["header:X-Raw"]),
            ({"id": "e1"}, ["id"]),
            ({"header:X:asText:all": "not a list"}, ["header:X:asText:all"]),
        ]
        for properties, bad in cases:
            self.assertBuildError(properties, bad)

    def test_blob_not_found(self):
        """Every missing blob is listed in blob_not_found."""
        error = self.assertBuildError({"attachments": [
            {"blobId": "gone1"}, {"blobId": "png"}, {"blobId": "gone2"}, {"blobId": "gone1"}]},
            [])
        self.assertEqual(error.blob_not_found, ["gone1", "gone2"])

    def test_seven_bit_safe(self):
        """Built messages are 7-bit except for an attached message's own octets."""
        raw = build({"subject": "\u00e9", "from": [{"name": "\u00e9", "email": "a@b"}],
                     "textBody": [{"partId": "t"}], "bodyValues": {"t": {"value": "\u00e9\0"}},
                     "attachments": [{"blobId": "pdf"}, {"blobId": "png"},
                                     {"blobId": "txt", "type": "text/plain"}]},
                    BLOBS.get, "d", NOW)
        self.assertTrue(raw.isascii())
        for line in raw.split(b"\r\n"):
            self.assertLessEqual(len(line), 998)
