"""
The lookups the mail writers make thousands of times per call find their
rows through an index on every column they compare, never by walking an
account: SQLite, without statistics, prefers a covering index on a prefix
to a narrower one that is not covering, which once made each lookup of a
message's mailboxes read the whole account.
"""

import sqlalchemy
from twisted.trial.unittest import SynchronousTestCase

from stalwart_tw.store import mail_query, schema, search_text
from stalwart_tw.store.draft import _equals_statement
from stalwart_tw.store.engine import make_engine

# (table, columns compared): the Draft lookups of mail/messages.py,
# mail/thread.py, mail/ingest.py and mail/mailbox.py.
LOOKUPS = (
    ("emails", ("account_id", "id")),
    ("emails", ("account_id", "thread_id")),
    ("email_mailboxes", ("account_id", "email_id")),
    ("email_mailboxes", ("account_id", "mailbox_id")),
    ("email_keywords", ("account_id", "email_id")),
    ("email_message_ids", ("account_id", "message_id")),
    ("email_message_ids", ("account_id", "email_id")),
    ("email_headers", ("account_id", "email_id")),
    ("email_search", ("account_id", "email_id")),
    ("mailboxes", ("account_id", "parent_id")),
    ("mailbox_subscriptions", ("account_id", "principal_id")),
)


class LookupPlanTests(SynchronousTestCase):
    """
    Each lookup by equality is an index search on all its columns.
    """

    def setUp(self):
        self.engine = make_engine(self.mktemp(), 0)
        self.addCleanup(self.engine.dispose)
        with self.engine.begin() as connection:
            schema.metadata.create_all(connection)

    def plan(self, connection, table_name, columns):
        table = schema.metadata.tables[table_name]
        equals = dict.fromkeys(columns, 1)
        sql, order, _, _ = _equals_statement(connection, table, equals)
        parameters = tuple(1 for _ in order)
        rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters).fetchall()
        return " ".join(row[-1] for row in rows)

    def test_lookups_search_all_their_columns(self):
        """Every lookup's plan searches an index with each compared column."""
        with self.engine.connect() as connection:
            for table_name, columns in LOOKUPS:
                plan = self.plan(connection, table_name, columns)
                self.assertIn("SEARCH", plan, (table_name, columns))
                for column in columns:
                    self.assertIn(f"{column}=?", plan, (table_name, columns, plan))

    def test_mailboxes_of_a_message_in_one_query(self):
        """The join of a message list to its mailboxes is an index search too."""
        members = schema.email_mailboxes
        query = sqlalchemy.select(members.c.email_id, members.c.mailbox_id).where(
            members.c.account_id == 1, members.c.email_id.in_([1, 2, 3]))
        with self.engine.connect() as connection:
            compiled = query.compile(connection, compile_kwargs={"literal_binds": True})
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").fetchall()
        plan = " ".join(row[-1] for row in rows)
        self.assertIn("email_id=?", plan)


class TextWindowPlanTests(SynchronousTestCase):
    """
    A page of a text query whose matches all fit in it is read from the
    full-text matches, not by walking the account's messages in date
    order: a rare word in a large mailbox costs its matches.
    """

    COUNT = 60

    def setUp(self):
        self.engine = make_engine(self.mktemp(), 0)
        self.addCleanup(self.engine.dispose)
        with self.engine.begin() as connection:
            schema.metadata.create_all(connection)
            for number in range(1, self.COUNT + 1):
                body = "rare word zanzibar" if number in (7, 30) else "plain words"
                body += " common" if number % 2 else ""
                connection.execute(schema.emails.insert().values(
                    account_id=1, id=number, thread_id=number, blob_hash="h", size=10,
                    received_at=1000 + number, envelope=b"", layout=b""))
                connection.execute(schema.email_mailboxes.insert().values(
                    account_id=1, mailbox_id=1, email_id=number, received_at=1000 + number))
                connection.execute(schema.email_search.insert().values(
                    **search_text.index_row(1, number, {"body": body})))
        self.statements = []

        def record(conn, cursor, statement, parameters, context, executemany):
            if "ORDER BY" in statement:
                self.statements.append((statement, parameters))

        sqlalchemy.event.listen(self.engine, "before_cursor_execute", record)

    def window(self, word, limit):
        where = sqlalchemy.and_(mail_query.in_mailbox(1, 1),
                                mail_query.text_match(1, None, word, ("en",)))
        comparators = [(schema.emails.c.received_at, False, False, None)]
        matches = mail_query.text_matches(1, None, word, ("en",))
        with self.engine.connect() as connection:
            _, start, numbers, total = mail_query.query_window(
                connection, 1, where, comparators, False, 0, limit, None, matches)
            [(statement, parameters)] = self.statements
            rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = " ".join(row[-1] for row in rows)
        return numbers, total, plan

    def test_rare_word_reads_its_matches(self):
        """Two matches in sixty messages: the page is two key lookups and a sort."""
        numbers, total, plan = self.window("zanzibar", 50)
        self.assertEqual((numbers, total), ([30, 7], 2))
        self.assertIn("emails USING INDEX sqlite_autoindex_emails_1 (account_id=? AND id=?)", plan)
        self.assertNotIn("emails_by_received", plan)

    def test_common_word_walks_the_date_order(self):
        """When the matches overflow the page, the first page is found by date."""
        numbers, total, plan = self.window("common", 5)
        self.assertEqual((numbers, total), ([59, 57, 55, 53, 51], 30))
        self.assertIn("emails_by_received", plan)
