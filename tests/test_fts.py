"""
Tests for the full-text index (L{stalwart_tw.store.fts}): rows built by
index_row, the FTS5 index kept by triggers, match and highlight_terms.
"""

import os

from sqlalchemy import create_engine, delete, insert, select, update
from sqlalchemy.dialects import sqlite as sqlite_dialect
from twisted.trial.unittest import SynchronousTestCase

from stalwart_tw.store import fts  # before create_all: it installs the index
from stalwart_tw.store import schema, search_text
from stalwart_tw.store.batch import WriteBatch, apply_batch
from stalwart_tw.store.engine import make_engine

ACCOUNT = 1

ENGLISH = (
    "Hi team, the quarterly report is attached. The runners said the numbers "
    "look better than last year, and we should discuss the budget on Friday."
)
GERMAN = (
    "Liebe Kolleginnen und Kollegen, wir haben lange in den alten Häusern am "
    "Fluss gewohnt. Die Rechnungen für den letzten Monat sind angekommen."
)
FRENCH = (
    "Bonjour à tous, les discussions continuelles sur le budget nous ont "
    "retardés. Merci de relire le rapport de la réunion avant vendredi."
)
CHINESE = "我们明天在北京开会，请准时参加。"
JAPANESE = "東京都に住んでいます。今日は天気がいいです。"


class IndexMixin:
    """
    An in-memory database with every table and the FTS5 index.
    """

    def setUp(self):
        self.engine = create_engine("sqlite://")
        self.connection = self.engine.connect()
        self.transaction = self.connection.begin()
        schema.metadata.create_all(self.connection)
        self.addCleanup(self.engine.dispose)
        self.addCleanup(self.connection.close)
        self.addCleanup(self.transaction.rollback)

    def add(self, email_id, account_id=ACCOUNT, default_language="en", **fields):
        row = search_text.index_row(account_id, email_id, fields, default_language)
        self.connection.execute(insert(schema.email_search).values(**row))
        return row

    def found(self, text, field=None, account_id=ACCOUNT, languages=("en",)):
        clause = fts.match(account_id, field, text, languages)
        return sorted(self.connection.execute(clause).scalars())

    def check_index(self):
        # FTS5 compares the index with the content table, row by row.
        self.connection.exec_driver_sql(
            "INSERT INTO email_search_fts(email_search_fts, rank) VALUES ('integrity-check', 1)"
        )


class MatchWordsTests(IndexMixin, SynchronousTestCase):
    """
    Words match exactly, by stem, folded, and as phrases.
    """

    def test_exact_words(self):
        """Each word of a query must occur: words are ANDed."""
        self.add(1, subject="Quarterly report", body="numbers attached")
        self.add(2, subject="Lunch", body="numbers only")
        self.assertEqual(self.found("numbers"), [1, 2])
        self.assertEqual(self.found("numbers report"), [1])
        self.assertEqual(self.found("report lunch"), [])

    def test_english_stems(self):
        """"running" finds "runs" and "runners" finds "runner" in English."""
        self.add(1, body="She runs every morning.")
        self.add(2, body="A runner and a walker.")
        self.add(3, body="Nothing about it.")
        self.assertEqual(self.found("running"), [1])
        self.assertEqual(self.found("runners"), [2])

    def test_german_stems(self):
        """A German query word finds its inflections when German is a query language."""
        row = self.add(1, subject="Wohnung", body=GERMAN)
        self.assertEqual(row["language"], "de")
        self.assertEqual(self.found("Häuser", languages=("de",)), [1])
        self.assertEqual(self.found("Rechnung", languages=("en", "de")), [1])
        self.assertEqual(self.found("Häuser", languages=("en",)), [])

    def test_french_stems(self):
        """A French query word finds its inflections when French is a query language."""
        row = self.add(1, subject="Réunion", body=FRENCH)
        self.assertEqual(row["language"], "fr")
        self.assertEqual(self.found("continuellement", languages=("fr",)), [1])
        self.assertEqual(self.found("réunions", languages=("fr",)), [1])

    def test_case_and_accents_folded(self):
        """Case and accents are folded on both sides."""
        self.add(1, subject="Café CRÈME", body="un garçon naïf")
        self.assertEqual(self.found("cafe creme"), [1])
        self.assertEqual(self.found("CAFÉ Crème"), [1])
        self.assertEqual(self.found("GARCON naif"), [1])
        self.assertEqual(self.found("ｃａｆｅ"), [1])

    def test_phrases_match_adjacent_words(self):
        """A quoted phrase matches only its words adjacent and in order."""
        self.add(1, body="the quick brown fox")
        self.add(2, body="the brown and quick fox")
        self.add(3, body="brown quick")
        self.assertEqual(self.found('"quick brown"'), [1])
        self.assertEqual(self.found('"brown quick"'), [3])
        self.assertEqual(self.found("quick brown"), [1, 2, 3])
        self.assertEqual(self.found('"quick brown" fox'), [1])

    def test_phrases_of_stems(self):
        """A phrase also matches the stems of its words, still adjacent."""
        self.add(1, body="He runs fast every day")
        self.add(2, body="Fast he runs")
        self.assertEqual(self.found('"running fast"'), [1])

    def test_words_after_the_bound_are_not_indexed(self):
        """Only the first MAX_FIELD_CHARS["body"] characters of a body are indexed."""
        filler = "alpha " * (search_text.MAX_FIELD_CHARS["body"] // 6 + 10)
        row = self.add(1, body=filler + "omega")
        self.assertEqual(self.found("alpha"), [1])
        self.assertEqual(self.found("omega"), [])
        self.assertLessEqual(len(row["body"].split()), 2 * search_text.MAX_FIELD_CHARS["body"] // 6 + 3)


class MatchFieldsTests(IndexMixin, SynchronousTestCase):
    """
    Addresses, fields, CJK text and accounts.
    """

    def test_addresses(self):
        """An address matches by its whole, its local part, its domain and its name."""
        self.add(1, **{"from": "Alice Smith <alice@example.com>", "to": "bob@mail.example.org"})
        self.add(2, **{"from": "carol@example.net"})
        for query in ("alice@example.com", "alice", "example.com", "smith", "Alice Smith"):
            self.assertEqual(self.found(query, "from"), [1], query)
        self.assertEqual(self.found("example.org", "to"), [1])
        self.assertEqual(self.found("mail.example.org", "to"), [1])
        self.assertEqual(self.found("bob@example.com", "from"), [])
        self.assertEqual(self.found("example", "from"), [1, 2])

    def test_fields(self):
        """A field matches only in its column; no field means any column."""
        self.add(1, subject="invoice", body="meeting", attachments="budget.xlsx", cc="dave@example.com")
        self.assertEqual(self.found("invoice", "subject"), [1])
        self.assertEqual(self.found("invoice", "body"), [])
        self.assertEqual(self.found("meeting", "body"), [1])
        self.assertEqual(self.found("budget", "attachments"), [1])
        self.assertEqual(self.found("dave", "cc"), [1])
        self.assertEqual(self.found("dave", "bcc"), [])
        self.assertEqual(self.found("invoice meeting"), [1])
        self.assertEqual(self.found("invoice meeting", "subject"), [])

    def test_chinese(self):
        """A two-character Chinese word is found inside a sentence without spaces."""
        row = self.add(1, body=CHINESE)
        self.add(2, body="上海的天气")
        self.assertEqual(row["language"], "zh")
        self.assertEqual(self.found("北京"), [1])
        self.assertEqual(self.found("开会"), [1])
        self.assertEqual(self.found("北京开会"), [1])
        self.assertEqual(self.found("上海"), [2])
        self.assertEqual(self.found("京开北"), [])

    def test_japanese(self):
        """Japanese words in kanji or kana are found inside a sentence."""
        row = self.add(1, subject=JAPANESE)
        self.add(2, subject="新しいｺﾝﾋﾟｭｰﾀｰを買いました")
        self.assertEqual(row["language"], "ja")
        self.assertEqual(self.found("東京"), [1])
        self.assertEqual(self.found("天気", "subject"), [1])
        self.assertEqual(self.found("コンピュータ"), [2])
        self.assertEqual(self.found("東"), [1])

    def test_accounts_are_isolated(self):
        """An account never sees another's emails, even with the same email id."""
        self.add(1, account_id=1, body="shared secret")
        self.add(1, account_id=2, body="shared secret")
        self.add(2, account_id=2, body="shared")
        self.assertEqual(self.found("shared", account_id=1), [1])
        self.assertEqual(self.found("shared", account_id=2), [1, 2])
        self.assertEqual(self.found("shared", account_id=3), [])

    def test_inside_an_email_query(self):
        """match is a condition on ids inside a larger Core select on emails."""
        for email_id in (1, 2):
            self.connection.execute(insert(schema.emails).values(
                account_id=ACCOUNT, id=email_id, thread_id=email_id, blob_hash="h" * 64,
                size=1, received_at=email_id, envelope=b"", layout=b"",
            ))
        self.add(1, body="hello world")
        self.add(2, body="goodbye world")
        emails = schema.emails
        query = select(emails.c.id).where(
            emails.c.account_id == ACCOUNT, emails.c.id.in_(fts.match(ACCOUNT, None, "hello"))
        ).order_by(emails.c.id)
        self.assertEqual(list(self.connection.execute(query).scalars()), [1])

    def test_query_plan_uses_the_index(self):
        """The query plan reads the FTS5 table by MATCH, never scanning email_search."""
        self.add(1, body="hello")
        emails = schema.emails
        query = select(emails.c.id).where(
            emails.c.account_id == ACCOUNT, emails.c.id.in_(fts.match(ACCOUNT, "body", "hello"))
        )
        compiled = query.compile(dialect=sqlite_dialect.dialect())
        parameters = tuple(compiled.params[name] for name in compiled.positiontup)
        plan = [row[3] for row in self.connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + str(compiled), parameters
        )]
        self.assertTrue(
            any(line.startswith("SCAN email_search_fts VIRTUAL TABLE INDEX") and ":M" in line
                for line in plan),
            plan,
        )
        self.assertNotIn("SCAN email_search", plan)

    def test_unknown_field(self):
        """A field outside the searchable ones is refused."""
        self.assertRaises(ValueError, fts.match, ACCOUNT, "header", "x")


class TriggerTests(IndexMixin, SynchronousTestCase):
    """
    The index changes with email_search, in the same transaction.
    """

    def test_delete(self):
        """Deleting an email_search row removes it from the index."""
        row = self.add(1, body="ephemeral")
        self.add(2, body="lasting")
        self.connection.execute(delete(schema.email_search).where(schema.email_search.c.rowid == row["rowid"]))
        self.assertEqual(self.found("ephemeral"), [])
        self.assertEqual(self.found("lasting"), [2])
        self.check_index()

    def test_update(self):
        """Updating a row's text replaces what the index holds for it."""
        row = self.add(1, subject="before")
        new = search_text.index_row(ACCOUNT, 1, {"subject": "after"})
        self.connection.execute(
            update(schema.email_search).where(schema.email_search.c.rowid == row["rowid"])
            .values(subject=new["subject"])
        )
        self.assertEqual(self.found("before"), [])
        self.assertEqual(self.found("after"), [1])
        self.check_index()

    def test_rolled_back_with_the_row(self):
        """An insert rolled back leaves nothing in the index."""
        savepoint = self.connection.begin_nested()
        self.add(1, body="phantom")
        savepoint.rollback()
        self.assertEqual(self.found("phantom"), [])
        self.check_index()

    def test_through_a_write_batch(self):
        """A row carried by a WriteBatch through bytes is indexed when applied."""
        batch = WriteBatch()
        batch.insert("email_search", **search_text.index_row(ACCOUNT, 9, {"subject": "batched hello"}))
        result = apply_batch(self.connection, WriteBatch.from_bytes(batch.to_bytes()), 1)
        self.assertTrue(result.applied, result)
        self.assertEqual(self.found("hello"), [9])

    def test_create_all_again(self):
        """create_all may run again; rows written before the index existed get indexed."""
        self.add(1, body="early")
        schema.metadata.create_all(self.connection)
        self.assertEqual(self.found("early"), [1])
        for trigger in ("insert", "delete", "update"):
            self.connection.exec_driver_sql(f"DROP TRIGGER email_search_fts_{trigger}")
        self.connection.exec_driver_sql("DROP TABLE email_search_fts")
        self.connection.execute(insert(schema.email_search).values(
            **search_text.index_row(ACCOUNT, 2, {"body": "unindexed"})
        ))
        schema.metadata.create_all(self.connection)
        self.assertEqual(self.found("early"), [1])
        self.assertEqual(self.found("unindexed"), [2])
        self.check_index()

    def test_store_engine(self):
        """The index works on a file opened by the store's own engine (WAL, pragmas)."""
        path = self.mktemp()
        os.makedirs(path)
        engine = make_engine(os.path.join(path, "db.sqlite3"), 0)
        self.addCleanup(engine.dispose)
        with engine.connect() as connection:
            connection.info["writer"] = True
            with connection.begin():
                schema.metadata.create_all(connection)
                row = search_text.index_row(ACCOUNT, 3, {"body": "durable words"})
                connection.execute(insert(schema.email_search).values(**row))
        with engine.connect() as connection:
            with connection.begin():
                ids = list(connection.execute(fts.match(ACCOUNT, None, "words")).scalars())
        self.assertEqual(ids, [3])


class InjectionTests(IndexMixin, SynchronousTestCase):
    """
    No query text is read as FTS5 syntax.
    """

    ATTEMPTS = (
        "NEAR(", "NEAR(hello world)", "subject:", "subject:hello", "{subject}:hello", "*",
        "hello*", '"', '"hello', 'hello"', '""', "AND OR NOT", "NOT hello", "hello OR world",
        "", "   ", "-", "+", "^hello", "(", ")", "') OR 1=1 --", "rowid:1", ":", "\x00",
        "\ue000", "{} : ()", "hello AND", "OR",
    )

    def setUp(self):
        super().setUp()
        self.add(1, subject="hello", body="near the subject")
        self.add(2, subject="world", body="and or not")
        self.add(3, subject="other", body="nothing shared")

    def test_never_raise_nor_match_everything(self):
        """Every attempt runs, and none matches every email."""
        for text in self.ATTEMPTS:
            for field in (None, "subject"):
                found = self.found(text, field)
                self.assertNotEqual(found, [1, 2, 3], (text, field))

    def test_operators_are_words(self):
        """FTS5 operators in a query are plain words to match."""
        self.assertEqual(self.found("AND OR NOT"), [2])
        self.assertEqual(self.found("NEAR( subject:"), [1])
        self.assertEqual(self.found("hello OR world"), [])

    def test_empty_matches_nothing(self):
        """An empty or punctuation-only query matches nothing."""
        for text in ("", "  ", "*", "-", '"', '""', "():{}^"):
            self.assertEqual(self.found(text), [], text)
            self.assertIsNone(fts.query_expression(None, text))

    def test_long_query(self):
        """A query of many words is bounded and still runs."""
        self.assertEqual(self.found("hello " * 500), [1])
        self.assertEqual(self.found(" ".join(f"w{i}" for i in range(500))), [])


class LanguageTests(SynchronousTestCase):
    """
    Language detection when a row is built.
    """

    def test_paragraphs(self):
        """A paragraph of English, German or French is detected as such."""
        for text, language in ((ENGLISH, "en"), (GERMAN, "de"), (FRENCH, "fr"),
                               (CHINESE, "zh"), (JAPANESE, "ja")):
            self.assertEqual(search_text.detect_language(text, "en"), language, text)
            self.assertEqual(search_text.index_row(ACCOUNT, 1, {"body": text}, "it")["language"], language)

    def test_short_text(self):
        """Short text takes the default language."""
        for text in ("", "Hallo", "Re: Rechnung", "ok thanks"):
            self.assertEqual(search_text.detect_language(text, "fr"), "fr", text)
        self.assertEqual(search_text.index_row(ACCOUNT, 1, {"subject": "Merci"}, "de")["language"], "de")

    def test_unsure_text(self):
        """Text in a language detection does not offer takes the default language."""
        self.assertEqual(search_text.detect_language("ประชุมพรุ่งนี้ที่สำนักงานใหญ่ตอนเก้าโมงเช้า", "en"), "en")

    def test_stems_follow_the_language(self):
        """The stored stems are those of the detected language."""
        row = search_text.index_row(ACCOUNT, 1, {"body": GERMAN})
        self.assertIn(" haus ", row["body"] + " ")
        self.assertNotIn(" haus ", search_text.index_row(ACCOUNT, 1, {"body": "die Häusern"})["body"] + " ")

    def test_bad_input(self):
        """Unknown fields, non-text values and bad ids are refused."""
        self.assertRaises(ValueError, search_text.index_row, ACCOUNT, 1, {"sender": "x"})
        self.assertRaises(TypeError, search_text.index_row, ACCOUNT, 1, {"body": b"x"})
        self.assertRaises(ValueError, search_text.index_row, ACCOUNT, 1, {}, "not-a-language")


class RowidTests(SynchronousTestCase):
    """
    The rowid of an email_search row.
    """

    def test_unique(self):
        """Account and email ids give distinct rowids."""
        self.assertNotEqual(search_text.search_rowid(1, 2), search_text.search_rowid(2, 1))
        self.assertEqual(search_text.search_rowid(0, 7), 7)
        self.assertEqual(search_text.search_rowid(2**31 - 1, 2**32 - 1), 2**63 - 1)

    def test_bounds(self):
        """Ids out of range are refused."""
        for account_id, email_id in ((-1, 0), (2**31, 0), (0, 2**32), (0, -1), (True, 1), (1, "2")):
            self.assertRaises(ValueError, search_text.search_rowid, account_id, email_id)


class HighlightTests(SynchronousTestCase):
    """
    highlight_terms for SearchSnippet.
    """

    def test_marks_words_and_stems(self):
        """Matching words are marked, by stem and folded, and the rest escaped."""
        mark = search_text.highlight_terms("running CAFE")
        self.assertEqual(
            mark('He runs to the café & <eats> "cake"'),
            'He <mark>runs</mark> to the <mark>café</mark> &amp; &lt;eats&gt; &quot;cake&quot;',
        )

    def test_no_match(self):
        """Nothing matching gives None."""
        self.assertIsNone(search_text.highlight_terms("zebra")("He runs"))
        self.assertIsNone(search_text.highlight_terms("")("He runs"))
        self.assertIsNone(search_text.highlight_terms("zebra")(None))

    def test_language(self):
        """Stems are those of the languages given."""
        self.assertEqual(
            search_text.highlight_terms("Häuser", ("de",))("Die Häusern"), "Die <mark>Häusern</mark>"
        )
        self.assertIsNone(search_text.highlight_terms("Häuser", ("en",))("Die Häusern"))

    def test_cjk(self):
        """CJK words are marked inside a run."""
        self.assertEqual(search_text.highlight_terms("北京")(CHINESE), "我们明天在<mark>北京</mark>开会，请准时参加。")

    def test_addresses_and_phrases(self):
        """Parts of addresses and the words of phrases are marked."""
        self.assertEqual(
            search_text.highlight_terms("alice")("From alice@example.com"),
            "From <mark>alice</mark>@example.com",
        )
        self.assertEqual(
            search_text.highlight_terms("example.com")("From alice@example.com"),
            "From alice@<mark>example.com</mark>",
        )
        self.assertEqual(
            search_text.highlight_terms('"quick brown"')("The quick brown fox"),
            "The <mark>quick</mark> <mark>brown</mark> fox",
        )

