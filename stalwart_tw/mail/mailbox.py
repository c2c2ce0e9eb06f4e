"""
Mailbox (RFC 8621 section 2): /get, /changes, /set, /query, /queryChanges.

Choices where the RFC leaves them to the server:
- Sibling names are unique without regard to case ("Work" and "work"
  cannot both be children of one parent), so IMAP clients never see two
  folders they cannot tell apart.
- The Inbox cannot be destroyed (its C{myRights.mayDelete} is false): mail
  is delivered to it.
- C{isSubscribed} is kept per user (a shared account's members each have
  their own), and is true for a mailbox its creator made.
- Counts are exact: they are counted from the messages when read, cached
  until the account's Email or Mailbox state moves.
- C{Mailbox/changes} answers C{updatedProperties: null}: this server
  does not log count changes apart from others (the RFC's allowed answer).
- A new account gets six mailboxes, the first time any mail method (or a
  delivery) touches it: Inbox, Drafts, Sent, Archive, Junk, Trash.
"""

import threading

from stalwart_tw.jmap.ids import decode_id
from stalwart_tw.jmap.query import (
    FilterValueError,
    InMemoryQuery,
    QuerySpec,
    by_property,
    compile_filter,
    compile_sort,
    filter_string,
    sorted_ids,
)
from stalwart_tw.jmap.standard import SetError, WritableType, check_boolean, standard_changes
from stalwart_tw.mail import messages
from stalwart_tw.mail.messages import MAILBOX_PREFIX, mailbox_id
from stalwart_tw.store.changes import changes_since, type_modseq
from stalwart_tw.store.mail_sql import EMAIL, MAILBOX, mailbox_counts, mailbox_rows, subscribed, type_modseqs

# Roles of the IANA IMAP Mailbox Name Attributes registry (RFC 8457), lower-case.
ROLES = frozenset({
    "all", "archive", "drafts", "flagged", "important", "inbox", "junk", "sent",
    "subscribed", "trash", "snoozed", "scheduled", "memos",
})

# The mailboxes of a new account: name, role, sortOrder.
DEFAULT_MAILBOXES = (
    ("Inbox", "inbox", 1),
    ("Drafts", "drafts", 2),
    ("Sent", "sent", 3),
    ("Archive", "archive", 4),
    ("Junk", "junk", 5),
    ("Trash", "trash", 6),
)

COUNT_PROPERTIES = ("totalEmails", "unreadEmails", "totalThreads", "unreadThreads")
CLIENT_SET = frozenset({"name", "parentId", "role", "sortOrder", "isSubscribed"})
SERVER_SET = frozenset({"id", "myRights", *COUNT_PROPERTIES})
MAX_SORT_ORDER = 2**31

_RIGHTS = ("mayReadItems", "mayAddItems", "mayRemoveItems", "maySetSeen", "maySetKeywords",
           "mayCreateChild", "mayRename", "mayDelete", "maySubmit")


def mailbox_number(text):
    return decode_id(MAILBOX_PREFIX, text)


def _rights(row, read_only):
    if read_only:
        return {name: name == "mayReadItems" for name in _RIGHTS}
    rights = dict.fromkeys(_RIGHTS, True)
    if row["role"] == "inbox":
        rights["mayDelete"] = False
    return rights


def _as_jmap(row, counts, subscriptions, parent_ids, read_only):
    total = counts.get(row["id"], (0, 0, 0, 0))
    found = {
        "id": mailbox_id(row["id"]),
        "name": row["name"],
        "parentId": None if row["parent_id"] is None else parent_ids(row["parent_id"]),
        "role": row["role"],
        "sortOrder": row["sort_order"],
        "myRights": _rights(row, read_only),
        "isSubscribed": row["id"] in subscriptions,
    }
    found.update(zip(COUNT_PROPERTIES, total))
    return found


class CountCache:
    """
    The counts of each account's mailboxes, as of the account's Email and
    Mailbox states: read again only once either has moved.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._by_account = {}

    def counts(self, connection, account, rows):
        states = type_modseqs(connection, account, (EMAIL, MAILBOX))
        key = (states[EMAIL], states[MAILBOX])
        with self._lock:
            cached = self._by_account.get(account)
        if cached is not None and cached[0] == key:
            return cached[1]
        trash = next((number for number, row in rows.items() if row["role"] == "trash"), None)
        counts = mailbox_counts(connection, account, trash)
        with self._lock:
            self._by_account[account] = (key, counts)
        return counts


def _read(connection, account, ids, principal_id, cache, with_counts):
    modseq = type_modseq(connection, account, MAILBOX)
    every = mailbox_rows(connection, account)
    rows = every if ids is None else {n: every[n] for n in ids if n in every}
    counts = cache.counts(connection, account, every) if with_counts else {}
    return modseq, rows, counts, subscribed(connection, account, principal_id)


class MailboxType(WritableType):
    """
    The Mailbox data type.

    @param store: the L{Store} read from.
    @param settings: the node's settings (the mailbox limits).
    """

    name = MAILBOX
    properties = frozenset({*CLIENT_SET, *SERVER_SET})
    server_set = SERVER_SET
    arguments = {
        "set": {"onDestroyRemoveEmails": check_boolean},
        "query": {"sortAsTree": check_boolean, "filterAsTree": check_boolean},
        "queryChanges": {"sortAsTree": check_boolean, "filterAsTree": check_boolean},
    }

    def __init__(self, store, settings):
        self._store = store
        self._settings = settings
        self.counts = CountCache()

    async def read(self, context, account, ids, properties=None, extra=None):
        return (await self.read_with_state(context, account, ids, properties, extra))[1]

    async def read_with_state(self, context, account, ids, properties=None, extra=None):
        numbers = None if ids is None else {mailbox_number(i) for i in ids} - {None}
        with_counts = properties is None or bool(set(COUNT_PROPERTIES) & set(properties))
        modseq, rows, counts, subscriptions = await self._store.read(
            _read, account, numbers, context.principal.id, self.counts, with_counts
        )
        read_only = account in context.read_only
        return modseq, {
            mailbox_id(number): _as_jmap(row, counts, subscriptions, mailbox_id, read_only)
            for number, row in rows.items()
        }

    def modseq(self, context, account):
        return self._store.read(type_modseq, account, MAILBOX)

    def changes(self, context, account, since, max_changes, extra=None):
        return self._store.read(changes_since, account, MAILBOX, since, max_changes)

    # Writing.

    def read_drafted(self, draft, call, account, ids):
        found = {}
        subscriptions = {
            row["mailbox_id"]
            for row in draft.rows(
                "mailbox_subscriptions", account_id=account, principal_id=call.context.principal.id
            )
        }
        read_only = account in call.context.read_only
        for object_id in ids:
            number = mailbox_number(object_id)
            row = None if number is None else draft.first("mailboxes", account_id=account, id=number)
            if row is not None:
                counts = self._drafted_counts(draft, account)
                found[object_id] = _as_jmap(row, counts, subscriptions, mailbox_id, read_only)
        return found

    def _drafted_counts(self, draft, account):
        # The counts as stored: a /set of mailboxes moves no message before
        # its updates are checked against them.
        every = mailbox_rows(draft.connection, account)
        return self.counts.counts(draft.connection, account, every)

    def build_create(self, draft, call, creation_id, properties):
        account = call.account
        unknown = sorted(set(properties) - CLIENT_SET)
        if unknown:
            raise SetError("invalidProperties", f"cannot set {unknown[0]!r}", unknown)
        values = {"name": None, "parentId": None, "role": None, "sortOrder": 0, "isSubscribed": True}
        values.update(properties)
        parent = self._check(draft, call, None, values)
        if len(draft.rows("mailboxes", account_id=account)) >= self._settings.mailbox_max_total:
            raise SetError(
                "overQuota", f"an account holds at most {self._settings.mailbox_max_total} mailboxes"
            )
        number = draft.next_number(f"{MAILBOX}/{account}")
        draft.batch.insert(
            "mailboxes", account_id=account, id=number, name=values["name"], parent_id=parent,
            role=values["role"], sort_order=values["sortOrder"],
        )
        if values["isSubscribed"]:
            self._subscribe(draft, call, number, True)
        draft.batch.log_change(account, MAILBOX, mailbox_id(number), "created")
        created = {"id": mailbox_id(number)}
        created.update({name: values[name] for name in CLIENT_SET if name not in properties})
        created.update(dict.fromkeys(COUNT_PROPERTIES, 0))
        created["myRights"] = _rights({"role": values["role"]}, False)
        return created

    def build_update(self, draft, call, object_id, current, patched):
        changed = sorted(
            name for name in SERVER_SET if patched.get(name) != current.get(name)
        )
        if changed:
            raise SetError("invalidProperties", f"{changed[0]!r} is set by the server", changed)
        unknown = sorted(set(patched) - self.properties)
        if unknown:
            raise SetError("invalidProperties", f"no property {unknown[0]!r}", unknown)
        number = mailbox_number(object_id)
        values = {name: patched.get(name) for name in CLIENT_SET}
        # A patch that sets a property to null asks for its default.
        for name, default in (("sortOrder", 0), ("isSubscribed", False)):
            if values[name] is None:
                values[name] = default
        parent = self._check(draft, call, number, values)
        row = draft.first("mailboxes", account_id=call.account, id=number)
        new_row = {"name": values["name"], "parent_id": parent, "role": values["role"],
                   "sort_order": values["sortOrder"]}
        stored_changed = any(row[column] != value for column, value in new_row.items())
        if stored_changed:
            draft.batch.update("mailboxes", {"account_id": call.account, "id": number}, **new_row)
        subscription_changed = values["isSubscribed"] != current["isSubscribed"]
        if subscription_changed:
            self._subscribe(draft, call, number, values["isSubscribed"])
        if stored_changed or subscription_changed:
            draft.batch.log_change(call.account, MAILBOX, object_id, "updated")
        return None

    def build_destroy(self, draft, call, object_id, current):
        account, number = call.account, mailbox_number(object_id)
        if current["role"] == "inbox":
            raise SetError("forbidden", "the Inbox cannot be destroyed")
        if draft.first("mailboxes", account_id=account, parent_id=number) is not None:
            raise SetError("mailboxHasChild", "the mailbox has child mailboxes")
        held = draft.rows("email_mailboxes", account_id=account, mailbox_id=number)
        if held and not call.extra.get("onDestroyRemoveEmails", False):
            raise SetError("mailboxHasEmail", f"the mailbox holds {len(held)} emails")
        for membership in held:
            row = messages.email_row(draft, account, membership["email_id"])
            others = messages.mailboxes_of(draft, account, row["id"]) - {number}
            if others:
                messages.set_mailboxes(draft, account, row, others)
            else:
                messages.destroy_email(draft, account, row)
        for row in draft.rows("mailbox_subscriptions", account_id=account, mailbox_id=number):
            draft.batch.delete(
                "mailbox_subscriptions", account_id=account, mailbox_id=number,
                principal_id=row["principal_id"],
            )
        draft.batch.delete("mailboxes", account_id=account, id=number)
        draft.batch.log_change(account, MAILBOX, object_id, "destroyed")

    def _subscribe(self, draft, call, number, on):
        key = {"account_id": call.account, "mailbox_id": number,
               "principal_id": call.context.principal.id}
        if on:
            draft.batch.insert("mailbox_subscriptions", **key)
        else:
            draft.batch.delete("mailbox_subscriptions", **key)

    def _check(self, draft, call, number, values):
        """
        Check the client-set values of a mailbox (C{number} C{None} for a
        new one) against the account as drafted.

        @return: the parent's number, or C{None}.
        """
        account, settings = call.account, self._settings
        name = values["name"]
        if not isinstance(name, str) or not name.strip():
            raise SetError("invalidProperties", "'name' must be a non-empty string", ["name"])
        if len(name) > settings.mailbox_name_max_len:
            raise SetError(
                "invalidProperties",
                f"'name' has at most {settings.mailbox_name_max_len} characters", ["name"],
            )
        if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
            raise SetError("invalidProperties", "'name' may not hold control characters", ["name"])
        sort_order = values["sortOrder"]
        if (not isinstance(sort_order, int) or isinstance(sort_order, bool)
                or not 0 <= sort_order < MAX_SORT_ORDER):
            raise SetError("invalidProperties", "'sortOrder' must be 0 to 2^31-1", ["sortOrder"])
        if not isinstance(values["isSubscribed"], bool):
            raise SetError("invalidProperties", "'isSubscribed' must be a boolean", ["isSubscribed"])
        role = values["role"]
        if role is not None:
            if not isinstance(role, str) or role not in ROLES:
                raise SetError("invalidProperties", f"{role!r} is no mailbox role", ["role"])
            holder = draft.first("mailboxes", account_id=account, role=role)
            if holder is not None and holder["id"] != number:
                raise SetError(
                    "invalidProperties", f"another mailbox has the role {role!r}", ["role"]
                )
        parent = self._check_parent(draft, call, number, values["parentId"])
        folded = name.casefold()
        for sibling in draft.rows("mailboxes", account_id=account, parent_id=parent):
            if sibling["id"] != number and sibling["name"].casefold() == folded:
                raise SetError(
                    "invalidProperties", f"a sibling mailbox is already named {name!r}", ["name"]
                )
        return parent

    def _check_parent(self, draft, call, number, given):
        if given is None:
            return None
        if not isinstance(given, str):
            raise SetError("invalidProperties", "'parentId' must be null or an id", ["parentId"])
        try:
            parent_text = call.resolve_id(given)
        except SetError:
            raise SetError("invalidProperties", f"no mailbox {given!r}", ["parentId"]) from None
        parent = mailbox_number(parent_text)
        depth, cursor = 1, parent
        while cursor is not None:
            row = draft.first("mailboxes", account_id=call.account, id=cursor)
            if row is None:
                raise SetError("invalidProperties", f"no mailbox {parent_text!r}", ["parentId"])
            if cursor == number:
                raise SetError(
                    "invalidProperties", "a mailbox cannot be inside itself", ["parentId"]
                )
            depth += 1
            cursor = row["parent_id"]
        height = 0 if number is None else self._height(draft, call.account, number)
        if depth + height > self._settings.mailbox_max_depth:
            raise SetError(
                "invalidProperties",
                f"mailboxes nest at most {self._settings.mailbox_max_depth} levels deep",
                ["parentId"],
            )
        return parent

    def _height(self, draft, account, number, level=0):
        # Levels below a mailbox; bounded by the depth limit already held.
        children = draft.rows("mailboxes", account_id=account, parent_id=number)
        if not children or level > self._settings.mailbox_max_depth:
            return 0
        return 1 + max(self._height(draft, account, child["id"], level + 1) for child in children)


def default_mailboxes(draft, account, owner):
    """
    Give a new account its standard mailboxes, unless it has had mailboxes
    before (a user who destroyed one does not get it back).

    @return: whether any were made.
    """
    if type_modseq(draft.connection, account, MAILBOX) or draft.first("mailboxes", account_id=account):
        return False
    for name, role, sort_order in DEFAULT_MAILBOXES:
        number = draft.next_number(f"{MAILBOX}/{account}")
        draft.batch.insert(
            "mailboxes", account_id=account, id=number, name=name, parent_id=None,
            role=role, sort_order=sort_order,
        )
        draft.batch.insert(
            "mailbox_subscriptions", account_id=account, mailbox_id=number, principal_id=owner
        )
        draft.batch.log_change(account, MAILBOX, mailbox_id(number), "created")
    return True


def _optional_string(value):
    if value is not None and not isinstance(value, str):
        raise FilterValueError(f"must be null or a string, not {value!r}")
    return value


def _flag(value):
    if not isinstance(value, bool):
        raise FilterValueError(f"must be a boolean, not {value!r}")
    return value


def _equal_or_null(name):
    def build(value):
        wanted = _optional_string(value)
        return lambda mailbox: mailbox[name] == wanted
    return build


def _has_any_role(value):
    wanted = _flag(value)
    return lambda mailbox: (mailbox["role"] is not None) == wanted


def _subscribed(value):
    wanted = _flag(value)
    return lambda mailbox: mailbox["isSubscribed"] == wanted


def _name_contains(value):
    wanted = filter_string(value).casefold()
    return lambda mailbox: wanted in mailbox["name"].casefold()


MAILBOX_QUERY = QuerySpec(
    filter_properties={
        "parentId": _equal_or_null("parentId"),
        "name": _name_contains,
        "role": _equal_or_null("role"),
        "hasAnyRole": _has_any_role,
        "isSubscribed": _subscribed,
    },
    sort_properties={
        "sortOrder": by_property("sortOrder"),
        "name": by_property("name"),
    },
)


class MailboxQuery(InMemoryQuery):
    """
    Mailbox/query over every mailbox of the account (an account holds at
    most C{mailbox-max-total}), with C{sortAsTree} and C{filterAsTree}
    (RFC 8621 section 2.3).
    """

    def __init__(self, mailboxes):
        super().__init__(mailboxes, MAILBOX_QUERY)

    def compile(self, filter_value, sort_value):
        return compile_filter(MAILBOX_QUERY, filter_value), compile_sort(MAILBOX_QUERY, sort_value)

    async def run(self, context, account, compiled, extra):
        predicate, comparators = compiled
        modseq, objects = await self._datatype.read_with_state(
            context, account, None, frozenset({"id", "name", "parentId", "role", "sortOrder",
                                               "isSubscribed"}), extra
        )
        matching = set(sorted_ids(objects, predicate, []))
        if extra.get("filterAsTree"):
            matching = {i for i in matching if _ancestors_match(objects, i, matching)}
        if not extra.get("sortAsTree"):
            ordered = sorted_ids(objects, lambda obj: obj["id"] in matching, comparators)
            return modseq, ordered
        return modseq, [i for i in _tree_order(objects, comparators) if i in matching]


    async def related_changes(self, context, account, compiled, extra, changed, since):
        # In tree order (or filtered as a tree) a change to one mailbox
        # moves or hides its descendants: every mailbox is reported (an
        # account holds at most mailbox-max-total).
        if not (extra.get("sortAsTree") or extra.get("filterAsTree")):
            return changed
        _, objects = await self._datatype.read_with_state(
            context, account, None, frozenset({"id"}), extra)
        return dict.fromkeys([*changed, *sorted(objects)])


def _ancestors_match(objects, object_id, matching):
    parent = objects[object_id]["parentId"]
    seen = 0
    while parent is not None and seen <= len(objects):
        if parent not in matching:
            return False
        parent = objects[parent]["parentId"] if parent in objects else None
        seen += 1
    return True


def _tree_order(objects, comparators):
    # Siblings in comparator order, each followed by its descendants.
    ordered = sorted_ids(objects, lambda obj: True, comparators)
    children = {}
    for object_id in ordered:
        children.setdefault(objects[object_id]["parentId"], []).append(object_id)
    result, stack = [], list(reversed(children.get(None, [])))
    while stack:
        object_id = stack.pop()
        result.append(object_id)
        stack.extend(reversed(children.get(object_id, [])))
    return result


async def mailbox_changes(mailboxes, max_changes, context, arguments):
    """
    Mailbox/changes: the standard response with C{updatedProperties}.
    """
    response = await standard_changes(mailboxes, max_changes, context, arguments)
    response["updatedProperties"] = None
    return response
