"""
Principal/query and Principal/queryChanges over real HTTP: the standard
in-memory /query and /queryChanges machinery proven on the directory.
"""

from twisted.internet import defer

from stalwart_tw.jmap.principal import principal_id
from stalwart_tw.jmap.session import account_id
from stalwart_tw.store.collation import unicode_casemap
from tests.test_jmap_principal import PrincipalTestCase

# The fixture's principals visible to the admin, by name.
EVERYONE = ["admin", "bob", "example.org", "jane", "sales"]
BY_NAME = [{"property": "name"}]


def apply_query_changes(cached, removed, added):
    """
    Update a cached result list as RFC 8620 section 5.6 tells a client to:
    splice out the removed ids, then splice in the added ones by index.
    """
    gone = set(removed)
    result = [object_id for object_id in cached if object_id not in gone]
    for item in added:
        result.insert(item["index"], item["id"])
    return result


class QueryTestCase(PrincipalTestCase):
    """
    The principal fixture with a few more facts to query, and helpers.
    """

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        directory = self.service.directory
        self.domain = yield directory.get("example.org")
        yield directory.update(
            "bob", description="Bob the Builder", email="bob@example.org",
            timezone="Europe/Paris",
        )
        yield directory.add_alias("jane", "jd@example.org")
        self.account = account_id(self.admin.id)

    def id_of(self, principal):
        return principal_id(principal.id)

    @defer.inlineCallbacks
    def names_of(self, ids):
        """The names of principals, in the order of their ids."""
        _, result, _ = yield self.one(self.as_admin, "Principal/get", {
            "accountId": self.account, "ids": ids, "properties": ["name"]})
        by_id = {p["id"]: p["name"] for p in result["list"]}
        return [by_id[object_id] for object_id in ids]

    @defer.inlineCallbacks
    def query(self, who=PrincipalTestCase.as_admin, account=None, **arguments):
        """The Principal/query response, the admin's by default."""
        arguments.setdefault("accountId", account or self.account)
        name, result, _ = yield self.one(who, "Principal/query", arguments)
        self.assertEqual(name, "Principal/query", result)
        return result

    @defer.inlineCallbacks
    def query_names(self, **arguments):
        """The names of the principals a Principal/query finds, in order."""
        result = yield self.query(**arguments)
        return (yield self.names_of(result["ids"]))

    @defer.inlineCallbacks
    def error(self, method, arguments):
        """The type of the error a call answers with."""
        arguments.setdefault("accountId", self.account)
        name, result, _ = yield self.one(self.as_admin, method, arguments)
        self.assertEqual(name, "error", (arguments, result))
        return result["type"]


class QueryFilterTests(QueryTestCase):
    """
    Each FilterCondition property, operators, and filter errors.
    """

    @defer.inlineCallbacks
    def test_no_filter(self):
        """Without a filter every visible principal is found."""
        names = yield self.query_names(filter=None, sort=BY_NAME)
        self.assertEqual(names, EVERYONE)

    @defer.inlineCallbacks
    def test_user_sees_only_visible(self):
        """A user's query finds only themselves and their groups."""
        result = yield self.query(self.as_jane, account_id(self.jane.id))
        self.assertEqual(sorted((yield self.names_of(result["ids"]))), ["jane", "sales"])

    @defer.inlineCallbacks
    def test_name(self):
        """name matches a case-insensitive substring of the name."""
        self.assertEqual((yield self.query_names(filter={"name": "AN"})), ["jane"])
        self.assertEqual((yield self.query_names(filter={"name": "nobody"})), [])

    @defer.inlineCallbacks
    def test_email(self):
        """email matches a substring of the primary address or of any alias."""
        self.assertEqual((yield self.query_names(filter={"email": "JD@"})), ["jane"])
        names = yield self.query_names(filter={"email": "@example.org"}, sort=BY_NAME)
        self.assertEqual(names, ["bob", "jane"])

    @defer.inlineCallbacks
    def test_text(self):
        """text looks in the name, email and description."""
        self.assertEqual((yield self.query_names(filter={"text": "builder"})), ["bob"])
        self.assertEqual((yield self.query_names(filter={"text": "sal"})), ["sales"])
        self.assertEqual((yield self.query_names(filter={"text": "jane@"})), ["jane"])

    @defer.inlineCallbacks
    def test_type(self):
        """type matches the kind exactly."""
        names = yield self.query_names(filter={"type": "individual"}, sort=BY_NAME)
        self.assertEqual(names, ["admin", "bob", "jane"])
        self.assertEqual((yield self.query_names(filter={"type": "group"})), ["sales"])
        self.assertEqual((yield self.query_names(filter={"type": "indiv"})), [])

    @defer.inlineCallbacks
    def test_time_zone(self):
        """timeZone matches the time zone exactly."""
        self.assertEqual((yield self.query_names(filter={"timeZone": "Europe/Paris"})), ["bob"])
        self.assertEqual((yield self.query_names(filter={"timeZone": "Europe"})), [])

    @defer.inlineCallbacks
    def test_account_ids(self):
        """accountIds finds the owners of those accounts; a domain owns none."""
        names = yield self.query_names(filter={"accountIds": [
            account_id(self.jane.id), account_id(self.sales.id), account_id(self.domain.id),
            "nonsense"]}, sort=BY_NAME)
        self.assertEqual(names, ["jane", "sales"])
        self.assertEqual((yield self.query_names(filter={"accountIds": []})), [])

    @defer.inlineCallbacks
    def test_condition_properties_combine(self):
        """Several properties in one condition must all match; an empty one matches all."""
        names = yield self.query_names(filter={"type": "individual", "email": "example"},
                                       sort=BY_NAME)
        self.assertEqual(names, ["bob", "jane"])
        self.assertEqual((yield self.query_names(filter={}, sort=BY_NAME)), EVERYONE)

    @defer.inlineCallbacks
    def test_operators(self):
        """AND, OR and NOT combine conditions, nested to any depth."""
        individual, group = {"type": "individual"}, {"type": "group"}
        cases = [
            ({"operator": "AND", "conditions": [individual, {"email": "example"}]},
             ["bob", "jane"]),
            ({"operator": "OR", "conditions": [{"name": "sales"}, {"name": "bob"}]},
             ["bob", "sales"]),
            ({"operator": "NOT", "conditions": [individual]}, ["example.org", "sales"]),
            ({"operator": "NOT", "conditions": [individual, group]}, ["example.org"]),
            ({"operator": "AND", "conditions": [
                {"operator": "NOT", "conditions": [{"name": "jane"}]},
                {"operator": "OR", "conditions": [individual, group]}]},
             ["admin", "bob", "sales"]),
            ({"operator": "AND", "conditions": []}, EVERYONE),
            ({"operator": "OR", "conditions": []}, []),
        ]
        for filter_value, expected in cases:
            names = yield self.query_names(filter=filter_value, sort=BY_NAME)
            self.assertEqual(names, expected, filter_value)

    @defer.inlineCallbacks
    def test_unsupported_filter(self):
        """A condition property Principal lacks is unsupportedFilter, even nested."""
        for filter_value in ({"colour": "red"},
                             {"operator": "OR", "conditions": [
                                 {"name": "x"},
                                 {"operator": "NOT", "conditions": [{"quota": 5}]}]}):
            error = yield self.error("Principal/query", {"filter": filter_value})
            self.assertEqual(error, "unsupportedFilter", filter_value)

    @defer.inlineCallbacks
    def test_malformed_filters(self):
        """A malformed filter or a condition value of the wrong type is invalidArguments."""
        for filter_value in ("jane",
                             ["name"],
                             {"operator": "XOR", "conditions": []},
                             {"operator": "AND"},
                             {"operator": "AND", "conditions": {"name": "x"}},
                             {"operator": "AND", "conditions": [5]},
                             {"operator": "AND", "conditions": [], "name": "x"},
                             {"name": 5},
                             {"email": None},
                             {"type": ["group"]},
                             {"accountIds": "a1"},
                             {"accountIds": [1]},
                             {"operator": "OR", "conditions": [{"text": True}]}):
            error = yield self.error("Principal/query", {"filter": filter_value})
            self.assertEqual(error, "invalidArguments", filter_value)

    @defer.inlineCallbacks
    def test_too_deep(self):
        """A filter nested past the server's depth is invalidArguments, not a crash."""
        filter_value = {"name": "x"}
        # 20 operators: 40 levels of JSON, within max-json-depth.
        for _ in range(20):
            filter_value = {"operator": "NOT", "conditions": [filter_value]}
        error = yield self.error("Principal/query", {"filter": filter_value})
        self.assertEqual(error, "invalidArguments")


class QueryInSqlTests(QueryTestCase):
    """
    Principal/query runs in SQL on the reader threads.
    """

    @defer.inlineCallbacks
    def test_no_principal_read_into_memory(self):
        """A query never reads the principals themselves: filter and sort are the database's."""
        principals = next(
            extension for extension in self.service.jmap._extensions
            if hasattr(extension, "principals")
        ).principals

        def refused(*arguments, **keywords):
            raise AssertionError("read every principal")

        real = principals.read_with_state, principals.read
        principals.read_with_state = principals.read = refused
        try:
            result = yield self.query(
                filter={"operator": "OR", "conditions": [{"text": "BUILDER"}, {"email": "JD@"}]},
                sort=[{"property": "name", "isAscending": False}],
            )
        finally:
            principals.read_with_state, principals.read = real
        self.assertEqual((yield self.names_of(result["ids"])), ["jane", "bob"])

    @defer.inlineCallbacks
    def test_unicode_casemap_in_sql(self):
        """Case folding and the Unicode collation hold in SQL as in Python."""
        directory = self.service.directory
        yield directory.create_principal("individual", "stra\u00dfe", description="Stra\u00dfe")
        yield directory.create_principal("individual", "\u00e9mile")
        names = yield self.query_names(filter={"text": "STRASSE"})
        self.assertEqual(names, ["stra\u00dfe"])
        names = yield self.query_names(
            filter={"type": "individual"}, sort=[{"property": "name"}])
        self.assertEqual(names, sorted(names, key=unicode_casemap))
        self.assertLess(names.index("\u00e9mile"), names.index("jane"))


class QuerySortTests(QueryTestCase):
    """
    Comparators, collations and sort errors.
    """

    @defer.inlineCallbacks
    def test_name_ascending_and_descending(self):
        """Sorting by name goes up by default and down with isAscending false."""
        self.assertEqual((yield self.query_names(sort=BY_NAME)), EVERYONE)
        names = yield self.query_names(sort=[{"property": "name", "isAscending": False}])
        self.assertEqual(names, list(reversed(EVERYONE)))

    @defer.inlineCallbacks
    def test_several_comparators(self):
        """Later comparators order what earlier ones leave equal."""
        names = yield self.query_names(sort=[
            {"property": "type", "isAscending": False},
            {"property": "name", "isAscending": False}])
        self.assertEqual(names, ["jane", "bob", "admin", "sales", "example.org"])

    @defer.inlineCallbacks
    def test_missing_values_first(self):
        """Principals without the sort property come first when ascending."""
        names = yield self.query_names(sort=[{"property": "email"}, {"property": "name"}])
        self.assertEqual(names, ["admin", "example.org", "sales", "bob", "jane"])

    @defer.inlineCallbacks
    def test_ties_are_stable(self):
        """Without a sort, or among equals, the order is by id and repeats exactly."""
        first = yield self.query()
        self.assertEqual(first["ids"], sorted(first["ids"]))
        by_type = yield self.query(sort=[{"property": "type"}])
        again = yield self.query(sort=[{"property": "type"}])
        self.assertEqual(by_type["ids"], again["ids"])
        individuals = [self.id_of(p) for p in (self.admin, self.jane, self.bob)]
        self.assertEqual(by_type["ids"][-3:], sorted(individuals))

    @defer.inlineCallbacks
    def test_collations(self):
        """Each supported collation orders names its own way."""
        directory = self.service.directory
        for name in ("émile", "fred", "9lives", "10x"):
            yield directory.create_principal("individual", name)
        mine = {"operator": "OR", "conditions": [
            {"name": name} for name in ("émile", "fred", "9lives", "10x")]}
        cases = [
            (None, ["10x", "9lives", "émile", "fred"]),
            ("i;unicode-casemap", ["10x", "9lives", "émile", "fred"]),
            ("i;ascii-casemap", ["10x", "9lives", "fred", "émile"]),
            ("i;ascii-numeric", ["9lives", "10x", "fred", "émile"]),
        ]
        for collation, expected in cases:
            comparator = {"property": "name"}
            if collation is not None:
                comparator["collation"] = collation
            # Names with no number tie under i;ascii-numeric: the id breaks the tie.
            names = yield self.query_names(filter=mine, sort=[comparator])
            if collation == "i;ascii-numeric":
                self.assertEqual(names[:2], expected[:2])
                self.assertEqual(sorted(names[2:]), sorted(expected[2:]))
            else:
                self.assertEqual(names, expected, collation)

    @defer.inlineCallbacks
    def test_unsupported_sort(self):
        """An unsortable property or an unknown collation is unsupportedSort."""
        for sort in ([{"property": "quota"}],
                     [{"property": "name"}, {"property": "colour"}],
                     [{"property": "name", "collation": "i;octet"}]):
            error = yield self.error("Principal/query", {"sort": sort})
            self.assertEqual(error, "unsupportedSort", sort)

    @defer.inlineCallbacks
    def test_malformed_sorts(self):
        """A malformed sort is invalidArguments."""
        for sort in ("name",
                     ["name"],
                     [{"isAscending": True}],
                     [{"property": 5}],
                     [{"property": "name", "isAscending": "yes"}],
                     [{"property": "name", "collation": 5}],
                     [{"property": "name", "keyword": "x"}]):
            error = yield self.error("Principal/query", {"sort": sort})
            self.assertEqual(error, "invalidArguments", sort)


class QueryWindowTests(QueryTestCase):
    """
    position, anchor, limit, calculateTotal and the response's shape.
    """

    @defer.inlineCallbacks
    def test_response_shape(self):
        """The response names the account, the type's state, and can calculate changes."""
        result = yield self.query()
        _, got, _ = yield self.one(self.as_admin, "Principal/get", {
            "accountId": self.account, "ids": []})
        self.assertEqual(result["accountId"], self.account)
        self.assertEqual(result["queryState"], got["state"])
        self.assertIs(result["canCalculateChanges"], True)
        self.assertEqual(result["position"], 0)
        self.assertNotIn("total", result)

    @defer.inlineCallbacks
    def test_position_and_limit(self):
        """position and limit cut a window out of the results."""
        result = yield self.query(sort=BY_NAME, position=1, limit=2)
        self.assertEqual((yield self.names_of(result["ids"])), ["bob", "example.org"])
        self.assertEqual(result["position"], 1)
        self.assertNotIn("limit", result)
        result = yield self.query(sort=BY_NAME, limit=0)
        self.assertEqual(result["ids"], [])

    @defer.inlineCallbacks
    def test_negative_position(self):
        """A negative position counts from the end, and is clamped at 0."""
        result = yield self.query(sort=BY_NAME, position=-2)
        self.assertEqual((yield self.names_of(result["ids"])), ["jane", "sales"])
        self.assertEqual(result["position"], 3)
        result = yield self.query(sort=BY_NAME, position=-10, limit=1)
        self.assertEqual((yield self.names_of(result["ids"])), ["admin"])
        self.assertEqual(result["position"], 0)

    @defer.inlineCallbacks
    def test_position_past_the_end(self):
        """A position past the results gives no ids, without error."""
        result = yield self.query(position=10, calculateTotal=True)
        self.assertEqual((result["ids"], result["total"]), ([], 5))

    @defer.inlineCallbacks
    def test_anchor(self):
        """The window starts at the anchor plus anchorOffset; position is then ignored."""
        bob = self.id_of(self.bob)
        result = yield self.query(sort=BY_NAME, anchor=bob, limit=2)
        self.assertEqual((yield self.names_of(result["ids"])), ["bob", "example.org"])
        self.assertEqual(result["position"], 1)
        result = yield self.query(sort=BY_NAME, anchor=bob, anchorOffset=2, position=0)
        self.assertEqual((yield self.names_of(result["ids"])), ["jane", "sales"])
        self.assertEqual(result["position"], 3)
        result = yield self.query(sort=BY_NAME, anchor=bob, anchorOffset=-5, limit=1)
        self.assertEqual((result["position"], (yield self.names_of(result["ids"]))),
                         (0, ["admin"]))

    @defer.inlineCallbacks
    def test_anchor_offset_without_anchor(self):
        """anchorOffset without an anchor is ignored."""
        result = yield self.query(sort=BY_NAME, anchorOffset=3, limit=1)
        self.assertEqual((yield self.names_of(result["ids"])), ["admin"])

    @defer.inlineCallbacks
    def test_anchor_not_found(self):
        """An anchor that is not in the results is anchorNotFound."""
        for anchor in (self.id_of(self.bob), "p-nonsense"):
            error = yield self.error("Principal/query", {
                "filter": {"type": "group"}, "anchor": anchor})
            self.assertEqual(error, "anchorNotFound", anchor)

    @defer.inlineCallbacks
    def test_calculate_total(self):
        """total counts every match, whatever the window, only when asked for."""
        result = yield self.query(filter={"type": "individual"}, limit=1, calculateTotal=True)
        self.assertEqual((len(result["ids"]), result["total"]), (1, 3))
        result = yield self.query(calculateTotal=False)
        self.assertNotIn("total", result)

    @defer.inlineCallbacks
    def test_no_limit_reports_the_servers(self):
        """With limit null the server's own limit applies and is reported."""
        result = yield self.query()
        self.assertEqual(result["limit"], self.service.settings.query_max_results)
        self.assertEqual(len(result["ids"]), 5)

    @defer.inlineCallbacks
    def test_null_only_where_the_rfc_allows_it(self):
        """null is refused for position, anchorOffset and calculateTotal; limit and anchor take it."""
        for arguments in ({"position": None}, {"anchorOffset": None}, {"calculateTotal": None}):
            error = yield self.error("Principal/query", arguments)
            self.assertEqual(error, "invalidArguments", arguments)
        name, result, _ = yield self.one(self.as_admin, "Principal/query", {
            "accountId": account_id(self.admin.id), "limit": None, "anchor": None,
            "filter": None, "sort": None})
        self.assertEqual(name, "Principal/query")
        error = yield self.error("Principal/queryChanges", {
            "sinceQueryState": result["queryState"], "calculateTotal": None})
        self.assertEqual(error, "invalidArguments")

    @defer.inlineCallbacks
    def test_wrong_argument_types(self):
        """Arguments of the wrong type, unknown ones, or no account are invalidArguments."""
        for arguments in ({"position": "1"}, {"position": 1.5}, {"position": True},
                          {"anchor": 5}, {"anchorOffset": "x"},
                          {"limit": -1}, {"limit": "10"}, {"limit": False},
                          {"calculateTotal": "yes"}, {"calculateTotal": None},
                          {"colour": "red"}, {"accountId": 7}):
            error = yield self.error("Principal/query", arguments)
            self.assertEqual(error, "invalidArguments", arguments)
        _, error, _ = yield self.one(self.as_admin, "Principal/query", {})
        self.assertEqual(error["type"], "invalidArguments")

    @defer.inlineCallbacks
    def test_other_account(self):
        """Another user's account is accountNotFound."""
        _, error, _ = yield self.one(self.as_jane, "Principal/query", {
            "accountId": account_id(self.bob.id)})
        self.assertEqual(error["type"], "accountNotFound")

    @defer.inlineCallbacks
    def test_capability_required(self):
        """Without the principals capability in using, Principal/query is unknownMethod."""
        _, error, _ = yield self.one(self.as_admin, "Principal/query",
                                     {"accountId": self.account},
                                     using=["urn:ietf:params:jmap:core"])
        self.assertEqual(error["type"], "unknownMethod")

    @defer.inlineCallbacks
    def test_ids_by_reference(self):
        """Principal/get takes its ids from Principal/query's /ids in the same request."""
        responses = yield self.call(self.as_admin, [
            ["Principal/query", {"accountId": self.account, "filter": {"type": "individual"},
                                 "sort": [{"property": "name", "isAscending": False}]}, "q"],
            ["Principal/get", {"accountId": self.account, "properties": ["name"], "#ids": {
                "resultOf": "q", "name": "Principal/query", "path": "/ids"}}, "g"],
        ])
        self.assertEqual(responses[1][0], "Principal/get")
        self.assertEqual([p["name"] for p in responses[1][1]["list"]], ["jane", "bob", "admin"])


class QueryLimitTests(QueryTestCase):
    """
    query-max-results caps the ids of one /query.
    """

    settings_overrides = {"query-max-results": "2"}

    @defer.inlineCallbacks
    def test_capped(self):
        """A greater limit, or none, is cut to the server's and the response says so."""
        for limit in (10, None):
            result = yield self.query(sort=BY_NAME, limit=limit, calculateTotal=True)
            self.assertEqual((yield self.names_of(result["ids"])), ["admin", "bob"])
            self.assertEqual((result["limit"], result["total"]), (2, 5))

    @defer.inlineCallbacks
    def test_within_the_cap(self):
        """A limit within the server's is used as given and not reported."""
        result = yield self.query(sort=BY_NAME, limit=1, position=2)
        self.assertEqual((yield self.names_of(result["ids"])), ["example.org"])
        self.assertNotIn("limit", result)


class QueryChangesTests(QueryTestCase):
    """
    Principal/queryChanges brings a cached query up to date.
    """

    @defer.inlineCallbacks
    def changes(self, old, **arguments):
        """The queryChanges response since the query response C{old}."""
        arguments.setdefault("accountId", self.account)
        arguments.setdefault("sinceQueryState", old["queryState"])
        name, result, _ = yield self.one(self.as_admin, "Principal/queryChanges", arguments)
        self.assertEqual(name, "Principal/queryChanges", result)
        return result

    @defer.inlineCallbacks
    def assert_catches_up(self, old, result, **query):
        """Applying the changes to the old ids gives the new ones, and the new state."""
        new = yield self.query(**query)
        self.assertEqual(apply_query_changes(old["ids"], result["removed"], result["added"]),
                         new["ids"])
        self.assertEqual(result["oldQueryState"], old["queryState"])
        self.assertEqual(result["newQueryState"], new["queryState"])
        self.assertEqual([item["index"] for item in result["added"]],
                         sorted(item["index"] for item in result["added"]))

    @defer.inlineCallbacks
    def test_no_changes(self):
        """Since the current state nothing is removed or added."""
        old = yield self.query(sort=BY_NAME)
        result = yield self.changes(old, sort=BY_NAME)
        self.assertEqual((result["removed"], result["added"]), ([], []))
        self.assertEqual(result["newQueryState"], old["queryState"])
        self.assertEqual(result["accountId"], self.account)

    @defer.inlineCallbacks
    def test_created(self):
        """A new principal is added at its index in the new results."""
        old = yield self.query(sort=BY_NAME)
        carol = yield self.service.directory.create_principal("individual", "carol")
        result = yield self.changes(old, sort=BY_NAME)
        self.assertEqual(result["added"], [{"id": self.id_of(carol), "index": 2}])
        yield self.assert_catches_up(old, result, sort=BY_NAME)

    @defer.inlineCallbacks
    def test_updated_moves(self):
        """A renamed principal is removed and added back at its new index."""
        old = yield self.query(sort=BY_NAME)
        yield self.service.directory.update("bob", name="zed")
        result = yield self.changes(old, sort=BY_NAME)
        self.assertIn(self.id_of(self.bob), result["removed"])
        self.assertEqual(result["added"], [{"id": self.id_of(self.bob), "index": 4}])
        yield self.assert_catches_up(old, result, sort=BY_NAME)

    @defer.inlineCallbacks
    def test_updated_out_of_the_filter(self):
        """A principal that no longer matches is removed and not added."""
        query = {"filter": {"timeZone": "Europe/Paris"}, "sort": BY_NAME}
        old = yield self.query(**query)
        self.assertEqual(old["ids"], [self.id_of(self.bob)])
        yield self.service.directory.update("bob", timezone="Asia/Tokyo")
        yield self.service.directory.update("jane", timezone="Europe/Paris")
        result = yield self.changes(old, **query)
        self.assertIn(self.id_of(self.bob), result["removed"])
        self.assertEqual(result["added"], [{"id": self.id_of(self.jane), "index": 0}])
        yield self.assert_catches_up(old, result, **query)

    @defer.inlineCallbacks
    def test_destroyed(self):
        """A deleted principal is removed."""
        old = yield self.query(sort=BY_NAME)
        yield self.service.directory.delete("bob")
        result = yield self.changes(old, sort=BY_NAME)
        self.assertEqual((result["removed"], result["added"]), ([self.id_of(self.bob)], []))
        yield self.assert_catches_up(old, result, sort=BY_NAME)

    @defer.inlineCallbacks
    def test_created_outside_the_filter(self):
        """A new principal the filter excludes is not added."""
        query = {"filter": {"type": "individual"}, "sort": BY_NAME}
        old = yield self.query(**query)
        yield self.service.directory.create_principal("group", "team")
        result = yield self.changes(old, **query)
        self.assertEqual(result["added"], [])
        yield self.assert_catches_up(old, result, **query)

    @defer.inlineCallbacks
    def test_calculate_total(self):
        """total is the new count of results, only when asked for."""
        old = yield self.query()
        yield self.service.directory.create_principal("individual", "carol")
        result = yield self.changes(old, calculateTotal=True)
        self.assertEqual(result["total"], 6)
        self.assertNotIn("total", (yield self.changes(old)))

    @defer.inlineCallbacks
    def test_up_to_id(self):
        """Nothing is added past upToId; what is before it still is."""
        old = yield self.query(sort=BY_NAME, limit=2)
        ann = yield self.service.directory.create_principal("individual", "ann")
        zoe = yield self.service.directory.create_principal("individual", "zoe")
        result = yield self.changes(old, sort=BY_NAME, upToId=old["ids"][-1])
        self.assertEqual(result["added"], [{"id": self.id_of(ann), "index": 1}])
        self.assertEqual(set(result["removed"]), {self.id_of(ann), self.id_of(zoe)})
        result = yield self.changes(old, sort=BY_NAME, upToId="p-nonsense")
        self.assertEqual([item["id"] for item in result["added"]],
                         [self.id_of(ann), self.id_of(zoe)])

    @defer.inlineCallbacks
    def test_max_changes(self):
        """More removed plus added than maxChanges is tooManyChanges."""
        old = yield self.query(sort=BY_NAME)
        yield self.service.directory.create_principal("individual", "carol")
        yield self.service.directory.create_principal("individual", "dave")
        # Two removed and two added: four changes.
        result = yield self.changes(old, sort=BY_NAME, maxChanges=4)
        self.assertEqual(len(result["added"]), 2)
        for max_changes in (3, 1, 0):
            error = yield self.error("Principal/queryChanges", {
                "sinceQueryState": old["queryState"], "sort": BY_NAME,
                "maxChanges": max_changes})
            self.assertEqual(error, "tooManyChanges", max_changes)

    @defer.inlineCallbacks
    def test_cannot_calculate(self):
        """A state the server never issued is cannotCalculateChanges."""
        old = yield self.query()
        future = format(int(old["queryState"], 16) + 1000, "x")
        for state in ("not-a-state", "", future):
            error = yield self.error("Principal/queryChanges", {"sinceQueryState": state})
            self.assertEqual(error, "cannotCalculateChanges", state)

    @defer.inlineCallbacks
    def test_filter_and_sort_checked(self):
        """queryChanges checks its filter and sort as query does."""
        state = (yield self.query())["queryState"]
        for arguments, expected in (({"filter": {"colour": "red"}}, "unsupportedFilter"),
                                    ({"sort": [{"property": "quota"}]}, "unsupportedSort"),
                                    ({"filter": {"name": 5}}, "invalidArguments")):
            error = yield self.error("Principal/queryChanges",
                                     {"sinceQueryState": state, **arguments})
            self.assertEqual(error, expected, arguments)

    @defer.inlineCallbacks
    def test_wrong_argument_types(self):
        """Arguments of the wrong type, unknown ones, or no state are invalidArguments."""
        state = (yield self.query())["queryState"]
        for arguments in ({},
                          {"sinceQueryState": 5},
                          {"sinceQueryState": state, "maxChanges": -1},
                          {"sinceQueryState": state, "maxChanges": "5"},
                          {"sinceQueryState": state, "upToId": 5},
                          {"sinceQueryState": state, "calculateTotal": "yes"},
                          {"sinceQueryState": state, "position": 0}):
            error = yield self.error("Principal/queryChanges", arguments)
            self.assertEqual(error, "invalidArguments", arguments)
