"""
The type seam: a data type registered from a test module alone (the notes
of L{tests.notes}) is served by a real node, with its capability in the
Session and its methods in the API; the standard methods take the type's
own arguments, tell its reads which properties are wanted, and hand the
whole filter and sort to its own query engine.
"""

import json
from base64 import b64encode

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.jmap.dispatch import CallContext
from stalwart_tw.jmap.errors import MethodError
from stalwart_tw.jmap.query import standard_query, standard_query_changes
from stalwart_tw.jmap.session import CORE_CAPABILITY, account_id
from stalwart_tw.jmap.standard import (
    standard_changes,
    standard_copy,
    standard_get,
    standard_set,
)
from stalwart_tw.service import EXTENSIONS, core_extension
from stalwart_tw.writer import AccountWriter
from tests.notes import NOTES_CAPABILITY, NotesExtension, notes_extension
from tests.support import NodeServiceMixin, open_store_and_node

USING = [CORE_CAPABILITY, NOTES_CAPABILITY]
ADMIN = {b"Authorization": [b"Basic " + b64encode(b"admin:the-service-secret")],
         b"Content-Type": [b"application/json"]}


class ServedTypeTests(NodeServiceMixin, TestCase):
    """
    A node whose extensions include the notes of the tests.
    """

    extensions = (*EXTENSIONS, notes_extension)

    @defer.inlineCallbacks
    def setUp(self):
        yield self.start_with_client(extensions=self.extensions)
        self.admin = yield self.service.directory.get("admin")
        self.account = account_id(self.admin.id)

    @defer.inlineCallbacks
    def api(self, calls, using=USING):
        response, body = yield self.request(
            "POST", "/jmap/", ADMIN,
            json.dumps({"using": using, "methodCalls": calls}).encode(),
        )
        return response.code, json.loads(body)

    @defer.inlineCallbacks
    def test_capability_in_the_session(self):
        """The type's capability is in the Session, on the account and as a primary account."""
        response, body = yield self.request("GET", "/jmap/session", ADMIN)
        self.assertEqual(response.code, 200)
        session = json.loads(body)
        self.assertEqual(session["capabilities"][NOTES_CAPABILITY], {"maxNoteLength": 1000})
        capabilities = session["accounts"][self.account]["accountCapabilities"]
        self.assertEqual(capabilities[NOTES_CAPABILITY], {})
        self.assertEqual(session["primaryAccounts"][NOTES_CAPABILITY], self.account)

    @defer.inlineCallbacks
    def test_methods_in_the_api(self):
        """Note/set, Note/get and Note/query are served, the query by the type's own engine."""
        code, document = yield self.api([
            ["Note/set", {"accountId": self.account, "create": {
                "k1": {"title": "shopping", "body": "milk"},
                "k2": {"title": "todo"},
            }}, "c1"],
            ["Note/get", {"accountId": self.account, "ids": None}, "c2"],
            ["Note/query", {"accountId": self.account, "filter": {"title": "todo"}}, "c3"],
        ])
        self.assertEqual(code, 200)
        (_, created, _), (_, got, _), (_, queried, _) = document["methodResponses"]
        self.assertEqual(sorted(created["created"]), ["k1", "k2"])
        self.assertEqual(sorted(note["title"] for note in got["list"]), ["shopping", "todo"])
        self.assertEqual(queried["ids"], [created["created"]["k2"]["id"]])
        engine = next(
            extension for extension in self.service.jmap._extensions
            if isinstance(extension, NotesExtension)
        ).query
        self.assertEqual(len(engine.compiled), 1)

    @defer.inlineCallbacks
    def test_capability_must_be_used(self):
        """Without the capability in 'using' the methods are unknownMethod."""
        code, document = yield self.api(
            [["Note/get", {"accountId": self.account, "ids": []}, "c"]], using=[CORE_CAPABILITY]
        )
        self.assertEqual(code, 200)
        self.assertEqual(document["methodResponses"][0][1]["type"], "unknownMethod")


class UnservedTypeTests(NodeServiceMixin, TestCase):
    """
    A node with only the server's own extensions.
    """

    @defer.inlineCallbacks
    def test_unknown_capability(self):
        """A node without the notes extension refuses its capability."""
        yield self.start_with_client()
        response, body = yield self.request(
            "POST", "/jmap/", ADMIN,
            json.dumps({"using": USING, "methodCalls": []}).encode(),
        )
        self.assertEqual(response.code, 400)
        self.assertIn("unknownCapability", json.loads(body)["type"])


class CoreOnlyNodeTests(NodeServiceMixin, TestCase):
    """
    A node of the core extension alone.
    """

    @defer.inlineCallbacks
    def test_sessions_follow_the_directory(self):
        """A user's accounts follow their groups even with no principals extension."""
        yield self.start_with_client(extensions=(core_extension,))
        directory = self.service.directory
        yield directory.create_principal("individual", "jane", secret="jane-password")
        sales = yield directory.create_principal("group", "sales", members=["jane"])
        jane = {b"Authorization": [b"Basic " + b64encode(b"jane:jane-password")]}
        response, body = yield self.request("GET", "/jmap/session", jane)
        self.assertIn(account_id(sales.id), json.loads(body)["accounts"])
        yield directory.replace("sales", members=[])
        response, body = yield self.request("GET", "/jmap/session", jane)
        self.assertNotIn(account_id(sales.id), json.loads(body)["accounts"])


class _NotesOnAStore(TestCase):
    """
    The notes type on a store, two notes in account 1, without HTTP.
    """

    @defer.inlineCallbacks
    def setUp(self):
        self.store, self.node = yield open_store_and_node(self)
        self.writer = AccountWriter(self.store, self.node)
        self.extension = NotesExtension(self.store, self.writer)
        self.notes = self.extension.notes
        self.context = CallContext(None, (NOTES_CAPABILITY,), {}, (1, 2))
        self.home = account_id(1)
        yield self.call(standard_set, {"create": {
            "a": {"title": "alpha", "body": "the first note"},
            "b": {"title": "beta", "body": "the second note"},
        }})

    def call(self, method, arguments):
        arguments = {"accountId": self.home, **arguments}
        if method in (standard_set, standard_copy):
            work = method(self.notes, self.writer, 10, self.context, arguments)
        elif method in (standard_query, standard_query_changes):
            work = method(self.notes, self.extension.query, _Limits, self.context, arguments)
        else:
            work = method(self.notes, 100, self.context, arguments)
        return defer.ensureDeferred(work)

    @defer.inlineCallbacks
    def refused(self, method, arguments):
        error = yield self.assertFailure(self.call(method, arguments), MethodError)
        return error.arguments()



class OpenStandardMethodsTests(_NotesOnAStore):
    """
    The standard methods over the notes type.
    """

    @defer.inlineCallbacks
    def test_type_arguments_taken(self):
        """Each standard method takes the type's own argument, and it has its effect."""
        got = yield self.call(standard_get, {"ids": None, "bodyLimit": 3})
        self.assertEqual(sorted(note["body"] for note in got["list"]), ["the", "the"])
        created = yield self.call(standard_set, {
            "create": {"c": {"title": "gamma"}}, "titlePrefix": "re: "})
        new_id = created["created"]["c"]["id"]
        got = yield self.call(standard_get, {"ids": [new_id]})
        self.assertEqual(got["list"][0]["title"], "re: gamma")
        queried = yield self.call(standard_query, {"bodyContains": "second"})
        self.assertEqual(len(queried["ids"]), 1)
        changes = yield self.call(standard_changes, {"sinceState": got["state"], "quiet": True})
        self.assertEqual(changes["created"], [])
        since = yield self.call(standard_query_changes, {
            "sinceQueryState": queried["queryState"], "bodyContains": "second"})
        self.assertEqual(since["added"], [])
        copied = yield self.call(standard_copy, {
            "fromAccountId": self.home, "accountId": account_id(2),
            "create": {"x": {"id": queried["ids"][0]}}, "titlePrefix": "copy: "})
        self.assertEqual(list(copied["created"]), ["x"])

    @defer.inlineCallbacks
    def test_type_arguments_checked(self):
        """A bad value of a type's argument is invalidArguments naming it."""
        for method, arguments, name in (
            (standard_get, {"bodyLimit": "ten"}, "bodyLimit"),
            (standard_set, {"titlePrefix": 7}, "titlePrefix"),
            (standard_query, {"bodyContains": []}, "bodyContains"),
        ):
            error = yield self.refused(method, arguments)
            self.assertEqual(error["type"], "invalidArguments")
            self.assertIn(repr(name), error["description"])

    @defer.inlineCallbacks
    def test_unknown_arguments_still_refused(self):
        """An argument neither standard nor the type's own is invalidArguments, on every method."""
        for method, arguments in (
            (standard_get, {"ids": []}),
            (standard_set, {}),
            (standard_changes, {"sinceState": "0"}),
            (standard_query, {}),
            (standard_query_changes, {"sinceQueryState": "0"}),
            (standard_copy, {"fromAccountId": account_id(2), "create": {}}),
        ):
            error = yield self.refused(method, {**arguments, "collapseThreads": True})
            self.assertEqual(error["type"], "invalidArguments", method.__name__)
            self.assertIn("'collapseThreads'", error["description"])
        # Another type's argument on the wrong method is unknown too.
        error = yield self.refused(standard_set, {"bodyLimit": 3})
        self.assertEqual(error["type"], "invalidArguments")

    @defer.inlineCallbacks
    def test_read_told_the_properties(self):
        """A /get tells the type's read which properties it wants: id always, all when null."""
        yield self.call(standard_get, {"ids": None, "properties": ["title"]})
        self.assertEqual(self.notes.reads[-1], frozenset({"id", "title"}))
        yield self.call(standard_get, {"ids": None})
        self.assertIsNone(self.notes.reads[-1])

    @defer.inlineCallbacks
    def test_query_compiled_by_the_type(self):
        """The type's engine gets the whole filter and sort; windowing and errors stay standard."""
        queried = yield self.call(standard_query, {
            "sort": [{"property": "title", "isAscending": False}], "position": 1, "limit": 1,
            "calculateTotal": True})
        self.assertEqual(queried["total"], 2)
        got = yield self.call(standard_get, {"ids": queried["ids"]})
        self.assertEqual(got["list"][0]["title"], "alpha")
        compiled = self.extension.query.compiled[-1]
        self.assertEqual(len(compiled[1]), 2)
        error = yield self.refused(standard_query, {"filter": {"body": "x"}})
        self.assertEqual(error["type"], "unsupportedFilter")
        error = yield self.refused(standard_query, {"sort": [{"property": "body"}]})
        self.assertEqual(error["type"], "unsupportedSort")


class InMemoryQueryTests(_NotesOnAStore):
    """
    The in-memory engine, for a type with few objects: a QuerySpec.
    """

    @defer.inlineCallbacks
    def test_filter_and_sort_in_python(self):
        """contains_text and by_property filter and sort the objects the type reads."""
        from stalwart_tw.jmap.query import QuerySpec, by_property, contains_text

        spec = QuerySpec(filter_properties={"text": contains_text("title", "body")},
                         sort_properties={"title": by_property("title")})
        arguments = {"accountId": self.home, "filter": {"text": "NOTE"},
                     "sort": [{"property": "title", "isAscending": False}]}
        result = yield defer.ensureDeferred(
            standard_query(self.notes, spec, _Limits, self.context, arguments))
        got = yield self.call(standard_get, {"ids": result["ids"]})
        self.assertEqual([note["title"] for note in got["list"]], ["beta", "alpha"])


class _Limits:
    query_max_results = 100
    changes_max_results = 100
