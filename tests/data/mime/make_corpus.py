"""Writer of this folder's corpus: raw message bytes and hand-derived expectations.

Usage: python tests/data/mime/make_corpus.py tests/data/mime

Every expected value below is written out by hand from RFC 8621 section 4.1
(plus RFC 2045/2046/2047/2231/5322 where 8621 refers to them); len() is used
only to count octets of content written literally in this file.  Nothing here
calls the parser under test.
"""

import base64
import json
import os
import sys
import unicodedata

OUT = sys.argv[1]
CASES = {}

PDF_BYTES = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\n"
             b"endobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n")
ALL_OCTETS = bytes(range(256))
PNG_BYTES = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
GIF_BYTES = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
JPEG_BYTES = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"


def b64(data):
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


def crlf(*lines):
    return b"".join(line + b"\r\n" for line in lines)


def part(pid, size, type_, charset=None, name=None, disposition=None, cid=None,
         language=None, location=None):
    return {"partId": pid, "size": size, "name": name, "type": type_, "charset": charset,
            "disposition": disposition, "cid": cid, "language": language, "location": location}


def multi(type_, sub):
    # size of a multipart node is left out on purpose (not defined by the RFC
    # for a part without a blob); the harness ignores it when absent.
    return {"partId": None, "name": None, "type": type_, "charset": None,
            "disposition": None, "cid": None, "language": None, "location": None,
            "subParts": sub}


def bv(value=None, problem=False, truncated=False):
    out = {"isEncodingProblem": problem, "isTruncated": truncated}
    if value is not None:
        # RFC 8621 4.1.4, EmailBodyValue value: "with any CRLF replaced with a
        # single LF".
        out["value"] = value.replace("\r\n", "\n")
    return out


def multipart_body(boundary, parts, preamble=b"", epilogue=b""):
    """parts are (header_bytes, content_bytes); content excludes the CRLF that
    RFC 2046 attaches to the following delimiter."""
    out = preamble + (b"\r\n" if preamble else b"")
    for headers, content in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n" + content + b"\r\n"
    out += b"--" + boundary + b"--\r\n" + epilogue
    return out


def case(name, raw, description, expected):
    assert name not in CASES
    expected = dict(expected)
    expected["size"] = len(raw)
    CASES[name] = (raw, {"description": description, "expected": expected})


# ---------------------------------------------------------------------------
# plain_text
body = b"Hi Jane,\r\n\r\nAre we still on for dinner?\r\n"
hdrs = [(b"From", b" Joe Bloggs <joe@example.com>"),
        (b"To", b" Jane Doe <jane@example.com>"),
        (b"Subject", b" Dinner on Thursday?"),
        (b"Date", b" Tue, 2 Jan 2024 03:04:05 +0100"),
        (b"Message-ID", b" <dinner.1@example.com>"),
        (b"MIME-Version", b" 1.0"),
        (b"Content-Type", b" text/plain; charset=utf-8"),
        (b"Content-Transfer-Encoding", b" 7bit")]
raw = b"".join(n + b":" + v + b"\r\n" for n, v in hdrs) + b"\r\n" + body
p1 = part("1", len(body), "text/plain", "utf-8")
case("plain_text", raw,
     "Single text/plain part: the whole body (with its final CRLF) is part 1; it is in "
     "both textBody and htmlBody; absent headers give null convenience properties.",
     {"headers": [{"name": n.decode(), "value": v.decode()} for n, v in hdrs],
      "from": [{"name": "Joe Bloggs", "email": "joe@example.com"}],
      "to": [{"name": "Jane Doe", "email": "jane@example.com"}],
      "cc": None, "bcc": None, "sender": None, "replyTo": None,
      "inReplyTo": None, "references": None,
      "subject": "Dinner on Thursday?",
      "header:Subject": " Dinner on Thursday?",
      "header:subject:asText": "Dinner on Thursday?",
      "sentAt": "2024-01-02T03:04:05+01:00",
      "header:Date:asDate": "2024-01-02T03:04:05+01:00",
      "messageId": ["dinner.1@example.com"],
      "bodyStructure": p1, "textBody": [p1], "htmlBody": [p1], "attachments": [],
      "hasAttachment": False,
      "preview": "Hi Jane, Are we still on for dinner?",
      "bodyValues": {"1": bv("Hi Jane,\r\n\r\nAre we still on for dinner?\r\n")}})

# ---------------------------------------------------------------------------
# html_only
body = b"<html><body><p>Fish &amp; chips</p></body></html>\r\n"
raw = crlf(b"From: news@example.com", b"Subject: HTML only",
           b"Content-Type: text/html; charset=us-ascii", b"") + body
p1 = part("1", len(body), "text/html", "us-ascii")
case("html_only", raw,
     "Single text/html part: it is the textBody too (no alternative exists); the preview "
     "is the HTML converted to text.",
     {"from": [{"name": None, "email": "news@example.com"}],
      "subject": "HTML only", "sentAt": None, "messageId": None,
      "bodyStructure": p1, "textBody": [p1], "htmlBody": [p1], "attachments": [],
      "hasAttachment": False, "preview": "Fish & chips",
      "bodyValues": {"1": bv(body.decode())}})

# ---------------------------------------------------------------------------
# alternative
t = b"Hello *world*"
h = b"<p>Hello <b>world</b></p>"
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: Alternative", b"MIME-Version: 1.0",
           b'Content-Type: multipart/alternative; boundary="alt-boundary"', b"") + \
    multipart_body(b"alt-boundary", [(crlf(b"Content-Type: text/plain; charset=utf-8"), t),
                                     (crlf(b"Content-Type: text/html; charset=utf-8"), h)])
p1 = part("1", len(t), "text/plain", "utf-8")
p2 = part("2", len(h), "text/html", "utf-8")
case("alternative", raw,
     "multipart/alternative text+html: textBody prefers text/plain, htmlBody text/html; "
     "the CRLF before each delimiter belongs to the delimiter (RFC 2046 5.1.1).",
     {"subject": "Alternative",
      "bodyStructure": multi("multipart/alternative", [p1, p2]),
      "textBody": [p1], "htmlBody": [p2], "attachments": [], "hasAttachment": False,
      "preview": "Hello *world*",
      "bodyValues": {"1": bv(t.decode()), "2": bv(h.decode())}})

# ---------------------------------------------------------------------------
# mixed_pdf
t = b"See the attached report."
raw = crlf(b"From: Joe <joe@example.com>", b"To: jane@example.com", b"Subject: Report",
           b"MIME-Version: 1.0", b"Content-Type: multipart/mixed; boundary=mixed42", b"") + \
    multipart_body(b"mixed42", [
        (crlf(b"Content-Type: text/plain; charset=us-ascii"), t),
        (crlf(b'Content-Type: application/pdf; name="ignored-name.pdf"',
              b'Content-Disposition: attachment; filename="report.pdf"',
              b"Content-Transfer-Encoding: base64"), b64(PDF_BYTES))])
p1 = part("1", len(t), "text/plain", "us-ascii")
p2 = part("2", len(PDF_BYTES), "application/pdf", None, name="report.pdf", disposition="attachment")
case("mixed_pdf", raw,
     "multipart/mixed with a base64 PDF: size is the decoded octet count, the "
     "Content-Disposition filename wins over the Content-Type name.",
     {"bodyStructure": multi("multipart/mixed", [p1, p2]),
      "textBody": [p1], "htmlBody": [p1], "attachments": [p2], "hasAttachment": True,
      "preview": "See the attached report.", "bodyValues": {"1": bv(t.decode())}})

# ---------------------------------------------------------------------------
# related_inline_image
t = b"See the logo."
h = b'<p>See the <img src="cid:logo@example.com"> logo.</p>'
related = multipart_body(b"inner", [
    (crlf(b"Content-Type: text/html; charset=us-ascii"), h),
    (crlf(b"Content-Type: image/png", b"Content-ID: <logo@example.com>",
          b"Content-Disposition: inline", b"Content-Transfer-Encoding: base64"), b64(PNG_BYTES))])
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: Logo", b"MIME-Version: 1.0",
           b'Content-Type: multipart/alternative; boundary="outer"', b"") + \
    multipart_body(b"outer", [
        (crlf(b"Content-Type: text/plain; charset=us-ascii"), t),
        (crlf(b'Content-Type: multipart/related; boundary="inner"; type="text/html"'), related)])
p1 = part("1", len(t), "text/plain", "us-ascii")
p2 = part("2", len(h), "text/html", "us-ascii")
p3 = part("3", len(PNG_BYTES), "image/png", None, disposition="inline", cid="logo@example.com")
case("related_inline_image", raw,
     "alternative(text, related(html, image cid)): in multipart/related only the first "
     "part can be inline, so the image goes to attachments; cid loses its angle brackets.",
     {"bodyStructure": multi("multipart/alternative",
                             [p1, multi("multipart/related", [p2, p3])]),
      "textBody": [p1], "htmlBody": [p2], "attachments": [p3],
      "preview": "See the logo.",
      "bodyValues": {"1": bv(t.decode()), "2": bv(h.decode())}})

# ---------------------------------------------------------------------------
# nested_rfc822
inner = crlf(b"From: Inner Sender <inner@example.org>", b"Subject: Inner subject",
             b"Message-ID: <inner@example.org>",
             b'Content-Type: multipart/alternative; boundary="in"', b"") + \
    multipart_body(b"in", [(crlf(b"Content-Type: text/plain"), b"inner text"),
                           (crlf(b"Content-Type: text/html"), b"<p>inner html</p>")])
inner = inner[:-2]  # the outer delimiter's CRLF follows "--in--"
t1 = b"Forwarded message below."
t3 = b"-- footer"
raw = crlf(b"From: Outer <outer@example.com>", b"Subject: Fwd: Inner subject",
           b"Message-ID: <outer@example.com>",
           b'Content-Type: multipart/mixed; boundary="outer"', b"") + \
    multipart_body(b"outer", [(crlf(b"Content-Type: text/plain; charset=us-ascii"), t1),
                              (crlf(b"Content-Type: message/rfc822"), inner),
                              (crlf(b"Content-Type: text/plain; charset=us-ascii"), t3)])
p1 = part("1", len(t1), "text/plain", "us-ascii")
p2 = part("2", len(inner), "message/rfc822", None)
p3 = part("3", len(t3), "text/plain", "us-ascii")
case("nested_rfc822", raw,
     "An attached message/rfc822 is one leaf (not expanded): numbering continues at 3 "
     "after it, its headers do not leak into the outer Email, and it is an attachment.",
     {"subject": "Fwd: Inner subject",
      "from": [{"name": "Outer", "email": "outer@example.com"}],
      "messageId": ["outer@example.com"],
      "bodyStructure": multi("multipart/mixed", [p1, p2, p3]),
      "textBody": [p1, p3], "htmlBody": [p1, p3], "attachments": [p2],
      "hasAttachment": True, "preview": "Forwarded message below.",
      "bodyValues": {"1": bv(t1.decode()), "3": bv(t3.decode())}})

# ---------------------------------------------------------------------------
# encoded_words
subject_raw = b" =?ISO-8859-1?Q?Caf=E9?= au =?UTF-8?Q?lait_?=\r\n =?UTF-8?B?4pyT?="
body = b"Encoded words.\r\n"
raw = (b"From: =?ISO-8859-1?Q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>\r\n"
       b"To: =?ISO-8859-1?B?SvZyZw==?= <joerg@example.com>,\r\n"
       b" =?UTF-8?Q?Fran=C3=A7ois?= Dupont <fd@example.com>\r\n"
       b"Cc: =?utf-8?b?5p2O5bCP6b6N?= <li@example.com>\r\n"
       b"Reply-To: =?UTF-8?Q?Jos=C3=A9?= =?UTF-8?Q?_Mar=C3=ADa?= <jm@example.com>\r\n"
       b"Subject:" + subject_raw + b"\r\n"
       b"X-Spaces: =?ISO-8859-1?Q?a?= b =?ISO-8859-1?Q?c?=   =?ISO-8859-1?Q?d?=\r\n"
       b"X-Not-Encoded: foo=?UTF-8?Q?bar?= baz\r\n"
       b"X-NFC: =?UTF-8?Q?Cafe=CC=81?=\r\n"
       b"X-Control: =?UTF-8?Q?a=00b=07c?=\r\n"
       b"Content-Type: text/plain; charset=us-ascii\r\n"
       b"\r\n" + body)
case("encoded_words", raw,
     "RFC 2047 Q and B words in UTF-8 and ISO-8859-1, lower-case 'b', folding and "
     "whitespace between adjacent encoded words dropped (kept next to plain text), "
     "badly placed words left alone, encoded control chars dropped, NFC applied.",
     {"subject": "Caf\u00e9 au lait \u2713",
      "header:Subject:asRaw": subject_raw.decode(),
      "from": [{"name": "Andr\u00e9 Pirard", "email": "PIRARD@vm1.ulg.ac.be"}],
      "to": [{"name": "J\u00f6rg", "email": "joerg@example.com"},
             {"name": "Fran\u00e7ois Dupont", "email": "fd@example.com"}],
      "cc": [{"name": "\u674e\u5c0f\u9f8d", "email": "li@example.com"}],
      "replyTo": [{"name": "Jos\u00e9 Mar\u00eda", "email": "jm@example.com"}],
      "header:X-Spaces:asText": "a b cd",
      "header:X-Not-Encoded:asText": "foo=?UTF-8?Q?bar?= baz",
      "header:X-NFC:asText": "Caf\u00e9",
      "header:X-Control:asText": "abc",
      "preview": "Encoded words.",
      "bodyValues": {"1": bv(body.decode())}})

# ---------------------------------------------------------------------------
# rfc2231_filename
t1 = b"Three attachments."
t3 = b"plain resume"
t4 = b"Price: \xa3 5"
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: RFC 2231", b"MIME-Version: 1.0",
           b'Content-Type: multipart/mixed; boundary="2231"', b"") + \
    multipart_body(b"2231", [
        (crlf(b"Content-Type: text/plain; charset=us-ascii"), t1),
        (crlf(b"Content-Type: application/octet-stream",
              b"Content-Disposition: attachment;",
              b" filename*0*=utf-8''%E6%97%A5%E6%9C%AC;",
              b" filename*1*=%E8%AA%9E%20report;",
              b' filename*2=".txt"',
              b"Content-Transfer-Encoding: base64"), b64(ALL_OCTETS)),
        (crlf(b'Content-Type: application/octet-stream; name="=?UTF-8?Q?r=C3=A9sum=C3=A9.txt?="'), t3),
        (crlf(b"Content-Type: text/plain; charset=iso-8859-1",
              b"Content-Disposition: attachment; filename*=iso-8859-1'en'%A3%20rates.txt",
              b"Content-Transfer-Encoding: 8bit"), t4)])
p1 = part("1", len(t1), "text/plain", "us-ascii")
p2 = part("2", 256, "application/octet-stream", None,
          name="\u65e5\u672c\u8a9e report.txt", disposition="attachment")
p3 = part("3", len(t3), "application/octet-stream", None, name="r\u00e9sum\u00e9.txt")
p4 = part("4", len(t4), "text/plain", "iso-8859-1", name="\u00a3 rates.txt",
          disposition="attachment")
case("rfc2231_filename", raw,
     "RFC 2231 filename with continuations mixing encoded and plain segments, an "
     "RFC 2231 ISO-8859-1 filename with language, and an RFC 2047 Content-Type name.",
     {"bodyStructure": multi("multipart/mixed", [p1, p2, p3, p4]),
      "textBody": [p1], "htmlBody": [p1], "attachments": [p2, p3, p4],
      "hasAttachment": True,
      "bodyValues": {"1": bv(t1.decode()), "4": bv("Price: \u00a3 5")}})

# ---------------------------------------------------------------------------
# unknown_charset
t1 = b"Hello world"
t2 = b"caf\xc3\xa9 and caf\xe9"
t3 = "ok \u2713".encode()
t4 = b"raw text"
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: Charsets",
           b'Content-Type: multipart/mixed; boundary="cs"', b"") + \
    multipart_body(b"cs", [
        (crlf(b"Content-Type: text/plain; charset=x-unknown"), t1),
        (crlf(b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: 8bit"), t2),
        (crlf(b'Content-Type: text/plain; charset="UTF-8"', b"Content-Transfer-Encoding: 8bit"), t3),
        (crlf(b"Content-Type: text/plain; charset=us-ascii",
              b"Content-Transfer-Encoding: x-made-up"), t4)])
p1 = part("1", len(t1), "text/plain", "x-unknown")
p2 = part("2", len(t2), "text/plain", "utf-8")
p3 = part("3", len(t3), "text/plain", "UTF-8")
p4 = part("4", len(t4), "text/plain", "us-ascii")
case("unknown_charset", raw,
     "isEncodingProblem: unknown charset, bytes invalid for UTF-8, and an unknown "
     "Content-Transfer-Encoding (treated as no encoding); a valid quoted UTF-8 part is fine.",
     {"bodyStructure": multi("multipart/mixed", [p1, p2, p3, p4]),
      "textBody": [p1, p2, p3, p4], "htmlBody": [p1, p2, p3, p4], "attachments": [],
      "hasAttachment": False,
      "bodyValues": {"1": bv("Hello world", problem=True),
                     "2": bv(problem=True),
                     "3": bv("ok \u2713"),
                     "4": bv("raw text", problem=True)}})

# ---------------------------------------------------------------------------
# qp_soft_breaks
enc = (b"This line is long enough that it was wrapped by a soft=\r\n"
       b" line break, and caf=C3=A9 costs =3D 3 euros.\r\n"
       b"Trailing space kept=20\r\n"
       b"Padding   \r\n"
       b"No final newline=\r\n")
dec = ("This line is long enough that it was wrapped by a soft line break, and caf\u00e9 "
       "costs = 3 euros.\r\nTrailing space kept \r\nPadding\r\nNo final newline")
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: Quoted-printable",
           b"Content-Type: text/plain; charset=utf-8",
           b"Content-Transfer-Encoding: quoted-printable", b"") + enc
p1 = part("1", len(dec.encode()), "text/plain", "utf-8")
case("qp_soft_breaks", raw,
     "Quoted-printable: soft line breaks (=CRLF) vanish, including the last one, =XX "
     "octets decode, unencoded trailing white space is deleted (RFC 2045 6.7), =20 stays.",
     {"bodyStructure": p1, "textBody": [p1],
      "preview": "This line is long enough that it was wrapped by a soft line break, and "
                 "caf\u00e9 costs = 3 euros. Trailing space kept Padding No final newline",
      "bodyValues": {"1": bv(dec)}})

# ---------------------------------------------------------------------------
# groups
reply_raw = (b' "  James Smythe" <james@example.com>, Friends:\r\n'
             b"  jane@example.com, =?UTF-8?Q?John_Sm=C3=AEth?=\r\n"
             b"  <john@example.com>;")
raw = (b"From: sender@example.com\r\n"
       b"To: undisclosed-recipients:;\r\n"
       b'Cc: Friends: jane@example.com, "Doe, John" <john@example.com>;, bob@example.com\r\n'
       b"Bcc: a@example.com, b@example.com, Team: c@example.com;, d@example.com\r\n"
       b"Reply-To:" + reply_raw + b"\r\n"
       b"Subject: Groups\r\n"
       b"\r\n"
       b"Groups.\r\n")
jane = {"name": None, "email": "jane@example.com"}
doe = {"name": "Doe, John", "email": "john@example.com"}
bob = {"name": None, "email": "bob@example.com"}
james = {"name": "James Smythe", "email": "james@example.com"}
smith = {"name": "John Sm\u00eeth", "email": "john@example.com"}
case("groups", raw,
     "Group syntax: an empty group, a named group followed by a plain mailbox, mailboxes "
     "around a group, and the RFC 8621 example address-list (folded, encoded word, "
     "quoted name with spaces).",
     {"to": [],
      "header:To:asAddresses": [],
      "header:To:asGroupedAddresses": [{"name": "undisclosed-recipients", "addresses": []}],
      "cc": [jane, doe, bob],
      "header:Cc:asGroupedAddresses": [{"name": "Friends", "addresses": [jane, doe]},
                                       {"name": None, "addresses": [bob]}],
      "bcc": [{"name": None, "email": "a@example.com"}, {"name": None, "email": "b@example.com"},
              {"name": None, "email": "c@example.com"}, {"name": None, "email": "d@example.com"}],
      "header:Bcc:asGroupedAddresses": [
          {"name": None, "addresses": [{"name": None, "email": "a@example.com"},
                                       {"name": None, "email": "b@example.com"}]},
          {"name": "Team", "addresses": [{"name": None, "email": "c@example.com"}]},
          {"name": None, "addresses": [{"name": None, "email": "d@example.com"}]}],
      "replyTo": [james, jane, smith],
      "header:Reply-To:asGroupedAddresses": [{"name": None, "addresses": [james]},
                                             {"name": "Friends", "addresses": [jane, smith]}],
      "header:Reply-To": reply_raw.decode()})

# ---------------------------------------------------------------------------
# address_comments
raw = (b"From: john@example.com (John Doe)\r\n"
       b'To: "Joe Q. Public" <john.q.public@example.com>, Mary Smith <mary@x.test>,\r\n'
       b" jdoe@example.org, Who? <one@y.test>\r\n"
       b'Cc: <boss@nil.test>, "Giant; \\"Big\\" Box" <sysservices@example.net>\r\n'
       b"Bcc: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>\r\n"
       b'Reply-To: "Joe \\"the dev\\" Bloggs" <joe@example.com>\r\n'
       b"Subject: Comments\r\n"
       b"\r\n"
       b"Comments.\r\n")
case("address_comments", raw,
     "Comments in addresses: a comment after a bare addr-spec becomes the name; comments "
     "inside display-name and addr-spec are discarded; quoted-pairs are decoded.",
     {"from": [{"name": "John Doe", "email": "john@example.com"}],
      "to": [{"name": "Joe Q. Public", "email": "john.q.public@example.com"},
             {"name": "Mary Smith", "email": "mary@x.test"},
             {"name": None, "email": "jdoe@example.org"},
             {"name": "Who?", "email": "one@y.test"}],
      "cc": [{"name": None, "email": "boss@nil.test"},
             {"name": 'Giant; "Big" Box', "email": "sysservices@example.net"}],
      "bcc": [{"name": "Pete", "email": "pete@silly.test"}],
      "replyTo": [{"name": 'Joe "the dev" Bloggs', "email": "joe@example.com"}]})

# ---------------------------------------------------------------------------
# address_no_name
raw = (b"From: <bare@example.com>\r\n"
       b"Sender: sender@example.com\r\n"
       b"To: plain@example.com\r\n"
       b"Reply-To: a@example.com,b@example.com\r\n"
       b"Subject: No names\r\n"
       b"\r\n"
       b"No names.\r\n")
case("address_no_name", raw,
     "Addresses without display names (angle-addr only, bare addr-spec, list without "
     "spaces): name is null.",
     {"from": [{"name": None, "email": "bare@example.com"}],
      "sender": [{"name": None, "email": "sender@example.com"}],
      "to": [{"name": None, "email": "plain@example.com"}],
      "replyTo": [{"name": None, "email": "a@example.com"}, {"name": None, "email": "b@example.com"}],
      "header:From:asGroupedAddresses": [{"name": None, "addresses": [
          {"name": None, "email": "bare@example.com"}]}]})

# ---------------------------------------------------------------------------
# headers_only
raw = crlf(b"From: a@example.com", b"Subject: Headers only",
           b"Date: Tue, 2 Jan 2024 03:04:05 +0100")
p1 = part("1", 0, "text/plain", "us-ascii")
case("headers_only", raw,
     "No blank line and no body at all: the body is one empty implicit text/plain "
     "us-ascii part.",
     {"subject": "Headers only", "sentAt": "2024-01-02T03:04:05+01:00",
      "bodyStructure": p1, "textBody": [p1], "htmlBody": [p1], "attachments": [],
      "hasAttachment": False, "preview": "", "bodyValues": {"1": bv("")}})

raw = crlf(b"From: a@example.com", b"Subject: Empty body", b"Content-Type: text/plain; charset=utf-8", b"")
p1 = part("1", 0, "text/plain", "utf-8")
case("headers_blank_line_no_body", raw,
     "Headers and the separating blank line, then nothing: an empty text/plain part.",
     {"subject": "Empty body",
      "bodyStructure": p1, "textBody": [p1], "htmlBody": [p1], "attachments": [],
      "hasAttachment": False, "preview": "", "bodyValues": {"1": bv("")}})

# ---------------------------------------------------------------------------
# no_headers
body = b"This message has no header fields.\r\n"
raw = b"\r\n" + body
p1 = part("1", len(body), "text/plain", "us-ascii")
case("no_headers", raw,
     "The message starts with the empty line: no header fields, every header property "
     "null (or [] with :all), body is implicit text/plain us-ascii.",
     {"headers": [], "subject": None, "from": None, "to": None, "sentAt": None,
      "messageId": None, "header:Subject": None, "header:Subject:all": [],
      "header:From:asAddresses:all": [],
      "bodyStructure": p1, "textBody": [p1], "htmlBody": [p1], "attachments": [],
      "hasAttachment": False, "preview": "This message has no header fields.",
      "bodyValues": {"1": bv(body.decode())}})

# ---------------------------------------------------------------------------
# bare_lf
body = b"Line one\nLine two\n"
raw = (b"From: Joe <joe@example.com>\n"
       b"To: jane@example.com\n"
       b"Subject: Bare LF\n"
       b"Date: Wed, 3 Jan 2024 10:20:30 -0800\n"
       b"Content-Type: text/plain; charset=us-ascii\n"
       b"\n" + body)
p1 = part("1", len(body), "text/plain", "us-ascii")
case("bare_lf", raw,
     "Bare LF line endings everywhere: headers still split, values exclude the LF, the "
     "body keeps its LFs.",
     {"subject": "Bare LF", "header:Subject:asRaw": " Bare LF",
      "from": [{"name": "Joe", "email": "joe@example.com"}],
      "to": [{"name": None, "email": "jane@example.com"}],
      "sentAt": "2024-01-03T10:20:30-08:00",
      "bodyStructure": p1, "textBody": [p1], "htmlBody": [p1], "attachments": [],
      "preview": "Line one Line two", "bodyValues": {"1": bv(body.decode())}})

# ---------------------------------------------------------------------------
# utf8_raw_subject
body = "Gr\u00fc\u00dfe\r\n".encode()
raw = ("Subject: Gr\u00fc\u00dfe aus K\u00f6ln \u2713\r\n"
       "From: J\u00fcrgen M\u00fcller <juergen@example.de>\r\n"
       "X-Decomposed: Cafe\u0301 (NFD)\r\n").encode() + \
    b"X-Latin1: caf\xe9\r\nX-Nul: a\x00b\r\n" + \
    crlf(b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: 8bit", b"") + body
p1 = part("1", len(body), "text/plain", "utf-8")
case("utf8_raw_subject", raw,
     "RFC 6532 raw UTF-8 in headers: decoded in Raw and Text; NFC only in Text; an "
     "octet that is not UTF-8 is read as Latin-1 (the heuristic RFC 8621 4.1.2.1 "
     "allows, this server's choice) and a NUL octet is dropped in Raw.",
     {"subject": "Gr\u00fc\u00dfe aus K\u00f6ln \u2713",
      "header:Subject:asRaw": " Gr\u00fc\u00dfe aus K\u00f6ln \u2713",
      "from": [{"name": "J\u00fcrgen M\u00fcller", "email": "juergen@example.de"}],
      "header:X-Decomposed": " Cafe\u0301 (NFD)",
      "header:X-Decomposed:asText": "Caf\u00e9 (NFD)",
      "header:X-Latin1": " caf\u00e9",
      "header:X-Nul": " ab",
      "bodyStructure": p1, "preview": "Gr\u00fc\u00dfe",
      "bodyValues": {"1": bv("Gr\u00fc\u00dfe\r\n")}})

# ---------------------------------------------------------------------------
# broken_multipart
t1 = b"First part."
t2 = b"Second part, the closing boundary never comes."
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: Broken",
           b'Content-Type: multipart/mixed; boundary="unfinished"', b"",
           b"--unfinished", b"Content-Type: text/plain; charset=us-ascii", b"", t1,
           b"--unfinished", b"Content-Type: text/plain; charset=us-ascii", b"") + t2
p1 = part("1", len(t1), "text/plain", "us-ascii")
p2 = part("2", len(t2), "text/plain", "us-ascii")
case("broken_multipart", raw,
     "The close delimiter is missing (and the message has no final CRLF): best effort "
     "keeps both parts, the last one running to the end of the message.",
     {"subject": "Broken",
      "bodyStructure": multi("multipart/mixed", [p1, p2]),
      "textBody": [p1, p2], "htmlBody": [p1, p2], "attachments": [],
      "preview": "First part.",
      "bodyValues": {"1": bv(t1.decode()), "2": bv(t2.decode())}})

# ---------------------------------------------------------------------------
# preamble_epilogue
B = b"=_Part_0'1(2)+,-./:?"
t1 = b"Implicit type part."
t2 = b"Second part.\r\n"
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: Preamble and epilogue",
           b"MIME-Version: 1.0",
           b"Content-Type: multipart/mixed;",
           b' boundary="' + B + b'"', b"",
           b"This is the preamble.  It is to be ignored.",
           b"--not-the-boundary",
           b"--" + B + b"  ",
           b"", t1,
           b"--" + B,
           b"Content-Type: text/plain; charset=us-ascii", b"", t2,
           b"--" + B + b"--",
           b"This is the epilogue.  It is also to be ignored.",
           b"--" + B,
           b"Content-Type: text/plain", b"",
           b"Not a part: this is in the epilogue.")
p1 = part("1", len(t1), "text/plain", "us-ascii")
p2 = part("2", len(t2), "text/plain", "us-ascii")
case("preamble_epilogue", raw,
     "Preamble (with a look-alike '--' line) and epilogue (with a delimiter line after "
     "the close delimiter) are ignored; the boundary uses tspecials and one delimiter has "
     "transport padding; a part with no header fields is text/plain us-ascii.",
     {"bodyStructure": multi("multipart/mixed", [p1, p2]),
      "textBody": [p1, p2], "htmlBody": [p1, p2], "attachments": [],
      "hasAttachment": False, "preview": "Implicit type part.",
      "bodyValues": {"1": bv(t1.decode()), "2": bv(t2.decode())}})

# ---------------------------------------------------------------------------
# inline_vs_attachment_text
t1 = b"Body text."
t2 = b"Notes as an attachment."
t3 = b"Named inline notes."
t4 = b"Trailer text."
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: Dispositions",
           b'Content-Type: multipart/mixed; boundary="disp"', b"") + \
    multipart_body(b"disp", [
        (crlf(b"Content-Type: text/plain; charset=us-ascii", b"Content-Disposition: inline"), t1),
        (crlf(b"Content-Type: text/plain; charset=us-ascii",
              b'Content-Disposition: attachment; filename="notes.txt"'), t2),
        (crlf(b"Content-Type: text/plain; charset=us-ascii",
              b'Content-Disposition: inline; filename="inline-notes.txt"'), t3),
        (crlf(b"Content-Type: text/plain; charset=us-ascii"), t4),
        (crlf(b"Content-Type: image/gif", b"Content-Disposition: inline",
              b"Content-Transfer-Encoding: base64"), b64(GIF_BYTES))])
p1 = part("1", len(t1), "text/plain", "us-ascii", disposition="inline")
p2 = part("2", len(t2), "text/plain", "us-ascii", name="notes.txt", disposition="attachment")
p3 = part("3", len(t3), "text/plain", "us-ascii", name="inline-notes.txt", disposition="inline")
p4 = part("4", len(t4), "text/plain", "us-ascii")
p5 = part("5", len(GIF_BYTES), "image/gif", None, disposition="inline")
case("inline_vs_attachment_text", raw,
     "RFC 8621 algorithm on multipart/mixed: inline text first, text with disposition "
     "attachment, a named inline text part that is not first (attachment), an unnamed "
     "text part and an inline image (both bodies, so not an attachment).",
     {"bodyStructure": multi("multipart/mixed", [p1, p2, p3, p4, p5]),
      "textBody": [p1, p4, p5], "htmlBody": [p1, p4, p5], "attachments": [p2, p3],
      "hasAttachment": True, "preview": "Body text.",
      "bodyValues": {"1": bv(t1.decode()), "2": bv(t2.decode()), "3": bv(t3.decode()),
                     "4": bv(t4.decode())}})

# ---------------------------------------------------------------------------
# message_ids
refs_raw = b" <root@example.com>\r\n <parent.1@example.com> (a comment)\r\n\t<parent.2@example.com>"
raw = (b"From: Joe <joe@example.com>\r\n"
       b"Subject: Re: ids\r\n"
       b"Message-ID: <first@example.com> <second@example.com>\r\n"
       b"In-Reply-To: <parent.1@example.com>\r\n <parent.2@example.com>\r\n"
       b"References:" + refs_raw + b"\r\n"
       b"Resent-Message-ID: <r1@example.com>\r\n"
       b"Resent-Message-ID: (resent again) <r2@example.com>\r\n"
       b"X-Ref: not-a-message-id\r\n"
       b"\r\n"
       b"Ids.\r\n")
case("message_ids", raw,
     "asMessageIds: two ids in one Message-ID, folded lists with comments and tabs, "
     ":all over a repeated header, and a value with no msg-id (null).",
     {"messageId": ["first@example.com", "second@example.com"],
      "header:Message-ID:asMessageIds": ["first@example.com", "second@example.com"],
      "inReplyTo": ["parent.1@example.com", "parent.2@example.com"],
      "references": ["root@example.com", "parent.1@example.com", "parent.2@example.com"],
      "header:References": refs_raw.decode(),
      "header:Resent-Message-ID:asMessageIds:all": [["r1@example.com"], ["r2@example.com"]],
      "header:X-Ref:asMessageIds": None})

# ---------------------------------------------------------------------------
# list_urls
raw = (b"From: list@example.com\r\n"
       b"Subject: List headers\r\n"
       b"List-Id: Example discussion list <list.example.com>\r\n"
       b"List-Post: <mailto:list@example.com>\r\n"
       b"List-Help: <mailto:list-request@example.com?subject=help> (List Instructions)\r\n"
       b"List-Unsubscribe: <https://example.com/unsub?u=1&l=2>,\r\n"
       b" <mailto:list-request@example.com?subject=unsubscribe>\r\n"
       b"List-Archive: <ftp://ftp.example.com/list/archive/> (FTP),\r\n"
       b"\t<http://www.example.com/list/archive/> (Web Archive)\r\n"
       b"List-Owner: <mailto:owner@example.com> (Contact Person for Help)\r\n"
       b"\r\n"
       b"List mail.\r\n")
case("list_urls", raw,
     "RFC 2369 headers as asURLs: angle brackets and comments removed, folded lists; "
     "List-Id as Text.",
     {"header:List-Post:asURLs": ["mailto:list@example.com"],
      "header:List-POST:asURLs": ["mailto:list@example.com"],
      "header:List-Help:asURLs": ["mailto:list-request@example.com?subject=help"],
      "header:List-Unsubscribe:asURLs": ["https://example.com/unsub?u=1&l=2",
                                         "mailto:list-request@example.com?subject=unsubscribe"],
      "header:List-Archive:asURLs": ["ftp://ftp.example.com/list/archive/",
                                     "http://www.example.com/list/archive/"],
      "header:List-Owner:asURLs": ["mailto:owner@example.com"],
      "header:List-Subscribe:asURLs": None,
      "header:List-Id:asText": "Example discussion list <list.example.com>"})

# ---------------------------------------------------------------------------
# custom_header_all
hdrs = [(b"X-Custom", b" first"),
        (b"Subject", b" first subject"),
        (b"x-CUSTOM", b" second"),
        (b"X-Folded", b" part one\r\n part two\r\n\tpart three"),
        (b"X-NoSpace", b"value"),
        (b"X-Empty", b""),
        (b"X-Trailing", b"   padded value   "),
        (b"Subject", b" second subject")]
raw = b"".join(n + b":" + v + b"\r\n" for n, v in hdrs) + b"\r\nBody.\r\n"
case("custom_header_all", raw,
     "A header appearing twice (different case) with :all and last-instance semantics; "
     "folding kept in Raw, unfolded (CRLF removed, WSP kept) in Text; no space after the "
     "colon; empty value; only leading SP is removed in Text; missing header.",
     {"headers": [{"name": n.decode(), "value": v.decode()} for n, v in hdrs],
      "header:X-Custom:all": [" first", " second"],
      "header:X-Custom": " second",
      "header:x-custom:asText": "second",
      "header:X-Custom:asText:all": ["first", "second"],
      "header:X-Folded": " part one\r\n part two\r\n\tpart three",
      "header:X-Folded:asText": "part one part two\tpart three",
      "header:X-NoSpace": "value",
      "header:X-NoSpace:asText": "value",
      "header:X-Empty": "",
      "header:X-Empty:asText": "",
      "header:X-Trailing": "   padded value   ",
      "header:X-Trailing:asText": "padded value   ",
      "header:X-Missing": None,
      "header:X-Missing:all": [],
      "header:X-Missing:asText:all": [],
      "subject": "second subject",
      "header:Subject:all": [" first subject", " second subject"]})

# ---------------------------------------------------------------------------
# date_obsolete_zone
raw = (b"From: Joe <joe@example.com>\r\n"
       b"Subject: Old dates\r\n"
       b"Date: Mon, 15 Jan 2024 10:00 EST\r\n"
       b"Resent-Date: Tue, 2 Jan 24 03:04:05 +0100\r\n"
       b"Resent-Date: not a date at all\r\n"
       b"X-Date-Comment: Fri, 21 Nov 1997 09:55:06 -0600 (MDT)\r\n"
       b"X-Date-PDT: Thu, 13 Jun 2024 08:00:00 PDT\r\n"
       b"X-Date-No-Weekday: 5 Feb 2024 23:59:59 +0530\r\n"
       b"\r\n"
       b"Dates.\r\n")
case("date_obsolete_zone", raw,
     "RFC 5322 4.3 obsolete date syntax: EST/PDT zone names, missing seconds, two-digit "
     "year, comments, no day-of-week; an unparseable Resent-Date gives null in :all.",
     {"sentAt": "2024-01-15T10:00:00-05:00",
      "header:Date:asDate": "2024-01-15T10:00:00-05:00",
      "header:Resent-Date:asDate:all": ["2024-01-02T03:04:05+01:00", None],
      "header:Resent-Date:asDate": None,
      "header:X-Date-Comment:asDate": "1997-11-21T09:55:06-06:00",
      "header:X-Date-PDT:asDate": "2024-06-13T08:00:00-07:00",
      "header:X-Date-No-Weekday:asDate": "2024-02-05T23:59:59+05:30"})

raw = (b"From: Joe <joe@example.com>\r\n"
       b"Subject: Bad date\r\n"
       b"Date: sometime last week\r\n"
       b"X-Bad-Day: Wed, 32 Jan 2024 10:00:00 +0100\r\n"
       b"\r\n"
       b"Dates.\r\n")
case("date_unparseable", raw,
     "A Date that is not a date-time gives sentAt null; Raw is still available; an "
     "impossible day of month is not a date either.",
     {"sentAt": None, "header:Date:asDate": None,
      "header:Date": " sometime last week",
      "header:X-Bad-Day:asDate": None})

# ---------------------------------------------------------------------------
# rfc_example_list_footer: the structure of RFC 8621 section 4.1.4's example
A, B_, D, K = b"Header from the list (A)", b"Text part B", b"Text part D", b"Footer from the list (K)"
E = b'<p>HTML part E <img src="cid:f@example.com"></p>'
J = crlf(b"From: someone@example.org", b"Subject: attached (J)", b"") + b"Attached message."
H = b"fake excel\x00\x01\x02"
b3 = multipart_body(b"b3", [
    (crlf(b"Content-Type: text/plain; charset=us-ascii", b"Content-Disposition: inline"), B_),
    (crlf(b"Content-Type: image/jpeg", b"Content-Disposition: inline",
          b"Content-Transfer-Encoding: base64"), b64(JPEG_BYTES)),
    (crlf(b"Content-Type: text/plain; charset=us-ascii", b"Content-Disposition: inline"), D)])
b4 = multipart_body(b"b4", [
    (crlf(b"Content-Type: text/html; charset=us-ascii"), E),
    (crlf(b"Content-Type: image/jpeg", b"Content-ID: <f@example.com>",
          b"Content-Transfer-Encoding: base64"), b64(JPEG_BYTES))])
b2 = multipart_body(b"b2", [(crlf(b'Content-Type: multipart/mixed; boundary="b3"'), b3),
                            (crlf(b'Content-Type: multipart/related; boundary="b4"'), b4)])
b1 = multipart_body(b"b1", [
    (crlf(b'Content-Type: multipart/alternative; boundary="b2"'), b2),
    (crlf(b"Content-Type: image/jpeg", b"Content-Disposition: attachment",
          b"Content-Transfer-Encoding: base64"), b64(JPEG_BYTES)),
    (crlf(b"Content-Type: application/x-excel", b"Content-Transfer-Encoding: base64"), b64(H)),
    (crlf(b"Content-Type: message/rfc822"), J)])
raw = crlf(b"From: list@example.com", b"Subject: RFC 8621 example", b"MIME-Version: 1.0",
           b'Content-Type: multipart/mixed; boundary="b0"', b"") + \
    multipart_body(b"b0", [
        (crlf(b"Content-Type: text/plain; charset=us-ascii", b"Content-Disposition: inline"), A),
        (crlf(b'Content-Type: multipart/mixed; boundary="b1"'), b1),
        (crlf(b"Content-Type: text/plain; charset=us-ascii", b"Content-Disposition: inline"), K)])
pA = part("1", len(A), "text/plain", "us-ascii", disposition="inline")
pB = part("2", len(B_), "text/plain", "us-ascii", disposition="inline")
pC = part("3", len(JPEG_BYTES), "image/jpeg", None, disposition="inline")
pD = part("4", len(D), "text/plain", "us-ascii", disposition="inline")
pE = part("5", len(E), "text/html", "us-ascii")
pF = part("6", len(JPEG_BYTES), "image/jpeg", None, cid="f@example.com")
pG = part("7", len(JPEG_BYTES), "image/jpeg", None, disposition="attachment")
pH = part("8", len(H), "application/x-excel", None)
pJ = part("9", len(J), "message/rfc822", None)
pK = part("10", len(K), "text/plain", "us-ascii", disposition="inline")
case("rfc_example_list_footer", raw,
     "The MIME structure of the RFC 8621 section 4.1.4 example; the RFC states the "
     "result: textBody [A,B,C,D,K], htmlBody [A,E,K], attachments [C,F,G,H,J].",
     {"bodyStructure": multi("multipart/mixed", [
         pA,
         multi("multipart/mixed", [
             multi("multipart/alternative", [
                 multi("multipart/mixed", [pB, pC, pD]),
                 multi("multipart/related", [pE, pF])]),
             pG, pH, pJ]),
         pK]),
      "textBody": [pA, pB, pC, pD, pK],
      "htmlBody": [pA, pE, pK],
      "attachments": [pC, pF, pG, pH, pJ],
      "hasAttachment": True,
      "preview": "Header from the list (A)",
      "bodyValues": {"1": bv(A.decode()), "2": bv(B_.decode()), "4": bv(D.decode()),
                     "5": bv(E.decode()), "10": bv(K.decode())}})

# ---------------------------------------------------------------------------
# alternative_single_child
h = b"<p>Only HTML</p>"
t = b"Only text"
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: Lonely alternatives",
           b'Content-Type: multipart/mixed; boundary="m"', b"") + \
    multipart_body(b"m", [
        (crlf(b'Content-Type: multipart/alternative; boundary="a1"'),
         multipart_body(b"a1", [(crlf(b"Content-Type: text/html; charset=us-ascii"), h)])[:-2]),
        (crlf(b'Content-Type: multipart/alternative; boundary="a2"'),
         multipart_body(b"a2", [(crlf(b"Content-Type: text/plain; charset=us-ascii"), t)])[:-2])])
p1 = part("1", len(h), "text/html", "us-ascii")
p2 = part("2", len(t), "text/plain", "us-ascii")
case("alternative_single_child", raw,
     "An alternative holding only HTML copies it into textBody, one holding only text "
     "copies it into htmlBody (end of parseStructure in RFC 8621 4.1.4).",
     {"bodyStructure": multi("multipart/mixed", [multi("multipart/alternative", [p1]),
                                                 multi("multipart/alternative", [p2])]),
      "textBody": [p1, p2], "htmlBody": [p1, p2], "attachments": [],
      "hasAttachment": False, "preview": "Only HTML",
      "bodyValues": {"1": bv(h.decode()), "2": bv(t.decode())}})

# ---------------------------------------------------------------------------
# part_metadata
t = b"Metadata."
raw = crlf(b"From: Joe <joe@example.com>", b"Subject: Part metadata",
           b"Content-Type: multipart/mixed; boundary=meta", b"") + \
    multipart_body(b"meta", [
        (crlf(b"Content-Type: TEXT/PLAIN (plain text please); CHARSET=us-ascii",
              b"Content-Language: en, fr (French)",
              b"Content-Location: http://example.com/notes.txt"), t),
        (crlf(b'Content-Type: IMAGE/PNG; name="pixel.png"',
              b'Content-Disposition: ATTACHMENT; filename="pixel.png"',
              b"Content-ID: (the id) <pixel.1@example.com>",
              b"Content-Transfer-Encoding: BASE64"), b64(PNG_BYTES))])
p1 = part("1", len(t), "text/plain", "us-ascii", language=["en", "fr"],
          location="http://example.com/notes.txt")
p2 = part("2", len(PNG_BYTES), "image/png", None, name="pixel.png", disposition="attachment",
          cid="pixel.1@example.com")
case("part_metadata", raw,
     "Body-part properties: type and disposition lower-cased with CFWS and parameters "
     "stripped, CHARSET parameter name case-insensitive, Content-Language list, "
     "Content-Location, Content-ID with a comment, upper-case BASE64.",
     {"bodyStructure": multi("multipart/mixed", [p1, p2]),
      "textBody": [p1], "htmlBody": [p1], "attachments": [p2], "hasAttachment": True,
      "preview": "Metadata.", "bodyValues": {"1": bv(t.decode())}})


os.makedirs(OUT, exist_ok=True)
for name, (raw, doc) in sorted(CASES.items()):
    with open(os.path.join(OUT, name + ".eml"), "wb") as f:
        f.write(raw)
    with open(os.path.join(OUT, name + ".json"), "w", encoding="utf-8") as f:
        text = json.dumps(doc, indent=1, ensure_ascii=False)
        # Escape what would be invisible or confusable when reading the file.
        text = "".join("\\u%04x" % ord(c) if unicodedata.category(c) in ("Mn", "Cc", "Cf", "So") and ord(c) > 127
                       or c == "\ufffd" else c for c in text)
        f.write(text + "\n")
print(len(CASES), "cases")
