"""
Tests for the JMAP request envelope, result references and the invocation
loop (RFC 8620 sections 3.3 to 3.7 and 4).
"""

import json

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from stalwart_tw.jmap.core import echo
from stalwart_tw.jmap.dispatch import MethodRegistry, run_request
from stalwart_tw.jmap.session import CORE_CAPABILITY
from stalwart_tw.jmap.errors import MethodError, RequestError
from stalwart_tw.jmap.request import (
    Invocation,
    evaluate_pointer,
    parse_request,
    resolve_references,
)

CAPABILITIES = {CORE_CAPABILITY, "urn:ietf:params:jmap:mail"}


def body(document):
    return json.dumps(document).encode()


def parse(raw, max_calls=16):
    return parse_request(raw, CAPABILITIES, max_calls)


class ParseRequestTests(TestCase):
    """
    Request-level errors carry the precise problem type.
    """

    def problem(self, raw, max_calls=16):
        error = self.assertRaises(RequestError, parse, raw, max_calls)
        return error.problem()

    def test_valid_request(self):
        """A well-formed request is decoded into invocations."""
        request = parse(body({"using": [CORE_CAPABILITY],
                              "methodCalls": [["Core/echo", {"a": 1}, "c1"]]}))
        self.assertEqual(request.using, (CORE_CAPABILITY,))
        self.assertEqual(request.calls, [Invocation("Core/echo", {"a": 1}, "c1")])
        self.assertIsNone(request.created_ids)

    def test_unknown_members_ignored(self):
        """Members the server does not know are ignored, as the RFC requires."""
        request = parse(body({"using": [], "methodCalls": [], "future": True}))
        self.assertEqual(request.calls, [])

    def test_not_json(self):
        """Truncated JSON is notJSON, with where it stopped."""
        problem = self.problem(b'{"using": [')
        self.assertEqual(problem["type"], "urn:ietf:params:jmap:error:notJSON")
        self.assertEqual(problem["status"], 400)
        self.assertIn("line 1", problem["detail"])

    def test_not_utf8(self):
        """A body that is not UTF-8 is notJSON."""
        problem = self.problem(b'{"using": ["\xff"], "methodCalls": []}')
        self.assertEqual(problem["type"], "urn:ietf:params:jmap:error:notJSON")

    def test_duplicate_member(self):
        """A repeated member name is not I-JSON."""
        problem = self.problem(b'{"using": [], "using": [], "methodCalls": []}')
        self.assertEqual(problem["type"], "urn:ietf:params:jmap:error:notJSON")
        self.assertIn("'using' appears twice", problem["detail"])

    def test_nan(self):
        """NaN is not a JSON number."""
        problem = self.problem(b'{"using": [], "methodCalls": [["Core/echo", {"x": NaN}, "c"]]}')
        self.assertEqual(problem["type"], "urn:ietf:params:jmap:error:notJSON")

    def test_numbers_beyond_i_json(self):
        """Integers beyond 2^53 and numbers beyond a double are notJSON, not a later crash."""
        for raw in (b'{"using": [], "methodCalls": [], "x": 18446744073709551616}',
                    b'{"using": [], "methodCalls": [], "x": 1e400}',
                    b'{"using": [], "methodCalls": [], "x": -9007199254740993}'):
            self.assertEqual(self.problem(raw)["type"], "urn:ietf:params:jmap:error:notJSON")

    def test_lone_surrogate(self):
        """A string escaping half of a surrogate pair is notJSON."""
        problem = self.problem(b'{"using": ["\\ud800"], "methodCalls": []}')
        self.assertEqual(problem["type"], "urn:ietf:params:jmap:error:notJSON")
        request = parse(b'{"using": [], "methodCalls": [["Core/echo", {"s": "\\ud83d\\ude00"}, "c"]]}')
        self.assertEqual(request.calls[0].arguments["s"], "\U0001f600")

    def test_deep_nesting(self):
        """Nesting deep enough to exhaust the parser is notJSON, not a crash."""
        problem = self.problem(b"[" * 100000 + b"]" * 100000)
        self.assertEqual(problem["type"], "urn:ietf:params:jmap:error:notJSON")

    def test_not_request(self):
        """JSON that does not match the Request type is notRequest, naming the fault."""
        cases = [
            (b"[]", "not a JSON object"),
            (body({"methodCalls": []}), "'using'"),
            (body({"using": [1], "methodCalls": []}), "'using'"),
            (body({"using": []}), "'methodCalls'"),
            (body({"using": [], "methodCalls": [["Core/echo", {}]]}), "methodCalls[0]"),
            (body({"using": [], "methodCalls": [[1, {}, "c"]]}), "method name"),
            (body({"using": [], "methodCalls": [["Core/echo", [], "c"]]}), "arguments"),
            (body({"using": [], "methodCalls": [["Core/echo", {}, 7]]}), "method call id"),
            (body({"using": [], "methodCalls": [], "createdIds": {"a": 1}}), "createdIds"),
        ]
        for raw, named in cases:
            problem = self.problem(raw)
            self.assertEqual(problem["type"], "urn:ietf:params:jmap:error:notRequest", raw)
            self.assertIn(named, problem["detail"])

    def test_unknown_capability(self):
        """A capability the server lacks is unknownCapability, naming it."""
        problem = self.problem(body({"using": ["urn:example:nope"], "methodCalls": []}))
        self.assertEqual(problem["type"], "urn:ietf:params:jmap:error:unknownCapability")
        self.assertIn("urn:example:nope", problem["detail"])

    def test_too_many_calls(self):
        """More calls than maxCallsInRequest is a limit problem naming the limit."""
        calls = [["Core/echo", {}, str(n)] for n in range(10000)]
        problem = self.problem(body({"using": [CORE_CAPABILITY], "methodCalls": calls}))
        self.assertEqual(problem["type"], "urn:ietf:params:jmap:error:limit")
        self.assertEqual(problem["limit"], "maxCallsInRequest")


class NestingTests(TestCase):
    """
    How deep a body nests is counted on its bytes, strings left out.
    """

    def test_depth(self):
        """Arrays and objects count; brackets inside strings and escapes do not."""
        from stalwart_tw.jmap.request import nesting_depth

        for raw, depth in (
            (b'"text"', 0), (b"{}", 1), (b"[[[]]]", 3), (b'[{"a": [1, {}]}]', 4),
            (b'{"a": "[[[[", "b": [1]}', 2), (b'["\\"[[", "\\\\"]', 1),
            (b'[[], [[]], []]', 3),
        ):
            self.assertEqual(nesting_depth(raw), depth, raw)

    def test_refused_before_parsing(self):
        """A body deeper than the limit is notJSON, however broken the rest of it."""
        raw = b"[" * 100 + b"oops"
        error = self.assertRaises(RequestError, parse_request, raw, CAPABILITIES, 16, 64)
        self.assertEqual(error.problem()["type"], "urn:ietf:params:jmap:error:notJSON")
        self.assertIn("100 levels", error.problem()["detail"])


class PointerTests(TestCase):
    """
    JSON Pointer with JMAP's '*'.
    """

    document = {
        "list": [
            {"id": "t1", "emailIds": ["m1", "m2"], "threadId": "a"},
            {"id": "t2", "emailIds": ["m3"], "threadId": "b"},
        ],
        "ids": ["x", "y"],
        "a/b": {"c~d": 5},
    }

    def test_member_and_index(self):
        """Plain RFC 6901 pointers select members and array items."""
        self.assertEqual(evaluate_pointer(self.document, "/ids/1"), "y")
        self.assertEqual(evaluate_pointer(self.document, "/a~1b/c~0d"), 5)
        self.assertEqual(evaluate_pointer(self.document, ""), self.document)

    def test_star_maps(self):
        """'*' maps the rest of the pointer over the array."""
        self.assertEqual(evaluate_pointer(self.document, "/list/*/threadId"), ["a", "b"])

    def test_star_flattens(self):
        """Arrays found under '*' are flattened into one array."""
        self.assertEqual(evaluate_pointer(self.document, "/list/*/emailIds"), ["m1", "m2", "m3"])

    def test_bad_pointers(self):
        """Pointers that name nothing raise LookupError."""
        for path in ("ids", "/nope", "/ids/2", "/ids/01", "/ids/-", "/list/*/nope", "/ids/0/x"):
            self.assertRaises(LookupError, evaluate_pointer, self.document, path)


class ReferenceTests(TestCase):
    """
    Result references between calls of one request.
    """

    responses = [
        Invocation("Foo/changes", {"created": ["f1", "f4"]}, "t0"),
        Invocation("error", {"type": "serverFail"}, "t1"),
    ]

    def reference(self, result_of="t0", name="Foo/changes", path="/created"):
        return {"resultOf": result_of, "name": name, "path": path}

    def test_resolves(self):
        """#ids takes the value the pointer selects."""
        arguments = {"accountId": "A", "#ids": self.reference()}
        self.assertEqual(
            resolve_references(arguments, self.responses), {"accountId": "A", "ids": ["f1", "f4"]}
        )

    def test_plain_and_referenced(self):
        """An argument given both ways is invalidArguments."""
        error = self.assertRaises(
            MethodError, resolve_references, {"ids": [], "#ids": self.reference()}, self.responses
        )
        self.assertEqual(error.type, "invalidArguments")

    def test_failures(self):
        """Unknown call, wrong name, error response and bad path are invalidResultReference."""
        for reference in (
            self.reference(result_of="t9"),
            self.reference(name="Foo/get"),
            self.reference(result_of="t1"),
            self.reference(path="/updated"),
        ):
            error = self.assertRaises(
                MethodError, resolve_references, {"#ids": reference}, self.responses
            )
            self.assertEqual(error.type, "invalidResultReference")

    def test_malformed_reference(self):
        """A reference that is not a ResultReference object is invalidArguments."""
        for reference in ("t0", {"resultOf": "t0", "name": "Foo/changes"}, {"resultOf": 1,
                          "name": "x", "path": "/"}):
            error = self.assertRaises(
                MethodError, resolve_references, {"#ids": reference}, self.responses
            )
            self.assertEqual(error.type, "invalidArguments")


class RunRequestTests(TestCase):
    """
    The invocation loop.
    """

    def setUp(self):
        self.registry = MethodRegistry()
        self.registry.register("Core/echo", CORE_CAPABILITY, echo)

    def run_calls(self, calls, using=(CORE_CAPABILITY,), created_ids=None):
        document = {"using": list(using), "methodCalls": calls}
        if created_ids is not None:
            document["createdIds"] = created_ids
        request = parse(body(document))
        return defer.ensureDeferred(run_request(self.registry, request, "jane", "s1"))

    @defer.inlineCallbacks
    def test_echo(self):
        """Core/echo answers with its arguments, under the same call id."""
        response = yield self.run_calls([["Core/echo", {"hello": True, "high": 5}, "b3ff"]])
        self.assertEqual(
            response, {"methodResponses": [["Core/echo", {"hello": True, "high": 5}, "b3ff"]],
                       "sessionState": "s1"}
        )

    @defer.inlineCallbacks
    def test_unknown_method_does_not_stop_the_request(self):
        """An unknown method answers unknownMethod and the next call still runs."""
        response = yield self.run_calls([["Foo/bar", {}, "a"], ["Core/echo", {"x": 1}, "b"]])
        first, second = response["methodResponses"]
        self.assertEqual(first[0], "error")
        self.assertEqual(first[1]["type"], "unknownMethod")
        self.assertEqual(first[2], "a")
        self.assertEqual(second, ["Core/echo", {"x": 1}, "b"])

    @defer.inlineCallbacks
    def test_capability_not_in_using(self):
        """A method whose capability the request did not declare is unknownMethod."""
        response = yield self.run_calls([["Core/echo", {}, "a"]], using=())
        self.assertEqual(response["methodResponses"][0][1]["type"], "unknownMethod")

    @defer.inlineCallbacks
    def test_reference_to_earlier_echo(self):
        """A call can take an argument from an earlier call's response."""
        response = yield self.run_calls([
            ["Core/echo", {"list": [{"id": "1"}, {"id": "2"}]}, "a"],
            ["Core/echo", {"#ids": {"resultOf": "a", "name": "Core/echo", "path": "/list/*/id"}},
             "b"],
        ])
        self.assertEqual(response["methodResponses"][1], ["Core/echo", {"ids": ["1", "2"]}, "b"])

    @defer.inlineCallbacks
    def test_reference_to_missing_call(self):
        """A reference to a call that does not exist fails that call only."""
        response = yield self.run_calls([
            ["Core/echo", {"#ids": {"resultOf": "zz", "name": "Core/echo", "path": "/x"}}, "a"],
        ])
        self.assertEqual(response["methodResponses"][0][1]["type"], "invalidResultReference")

    @defer.inlineCallbacks
    def test_created_ids_round_trip(self):
        """createdIds given in the request come back in the response; absent, they do not."""
        response = yield self.run_calls([], created_ids={"k1": "id1"})
        self.assertEqual(response["createdIds"], {"k1": "id1"})
        response = yield self.run_calls([])
        self.assertNotIn("createdIds", response)

    @defer.inlineCallbacks
    def test_method_failure_is_server_fail(self):
        """An unexpected exception in a method is serverFail for that call, and logged."""

        def broken(context, arguments):
            raise KeyError("bug")

        self.registry.register("Broken/get", CORE_CAPABILITY, broken)
        response = yield self.run_calls([["Broken/get", {}, "a"], ["Core/echo", {}, "b"]])
        self.assertEqual(response["methodResponses"][0][1]["type"], "serverFail")
        self.assertEqual(response["methodResponses"][1][0], "Core/echo")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    @defer.inlineCallbacks
    def test_shutting_down_is_server_unavailable(self):
        """A write refused because the node is stopping is serverUnavailable, not logged as a bug."""
        from stalwart_tw.store.errors import NodeStopping

        async def writes(context, arguments):
            raise NodeStopping("the node is shutting down")

        self.registry.register("Writes/set", CORE_CAPABILITY, writes)
        response = yield self.run_calls([["Writes/set", {}, "a"]])
        self.assertEqual(response["methodResponses"][0][1]["type"], "serverUnavailable")
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_async_method_and_several_responses(self):
        """A method may be a coroutine and may answer with several responses."""

        async def two(context, arguments):
            return [("Foo/one", {}), ("Foo/two", {"n": 2})]

        self.registry.register("Foo/both", CORE_CAPABILITY, two)
        response = yield self.run_calls([["Foo/both", {}, "c"]])
        self.assertEqual(response["methodResponses"],
                         [["Foo/one", {}, "c"], ["Foo/two", {"n": 2}, "c"]])

    def test_duplicate_registration(self):
        """Registering one method name twice is a programming error caught at start."""
        self.assertRaises(
            ValueError, self.registry.register, "Core/echo", CORE_CAPABILITY, echo
        )
