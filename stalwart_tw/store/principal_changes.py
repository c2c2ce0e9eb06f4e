"""
Principal changes: a requested directory change turned into a L{WriteBatch}
against the state read.

Pure functions on a L{Draft} (a read transaction, with the batch being
built laid over it), run on the store's reader threads by the
L{AccountWriter}, for the L{Directory}'s writes and for Principal/set
alike: the rules that need no data check a request before anything is
read; a builder then reads what its rules need through the draft, fills
the batch, and raises a L{DirectoryError} subclass naming the offending
value when a rule is broken. Several builders may fill one batch (a
Principal/set of many objects): each sees what the ones before it did. The
design choices they keep are told in L{stalwart_tw.store.directory}.

The kinds, limits and errors of the directory live here because the rules
use and raise them; L{stalwart_tw.store.directory} re-exports them.
"""

import re
import zoneinfo
from dataclasses import dataclass

from sqlalchemy import func, select

from stalwart_tw.store import schema
from stalwart_tw.store.draft import Draft
from stalwart_tw.store.schema import DIRECTORY_ACCOUNT

INDIVIDUAL, GROUP, LIST, DOMAIN = "individual", "group", "list", "domain"
KINDS = (INDIVIDUAL, GROUP, LIST, DOMAIN)

# Which kinds of principal each kind may hold as members.
MEMBER_KINDS = {GROUP: (INDIVIDUAL, GROUP), LIST: (INDIVIDUAL, GROUP)}

CHANGE_TYPE = "Principal"

NAME_MAX = 255
# The shortest password a principal may be given (Principal/set, the admin
# shell); the admin's from the settings must be longer (config.py).
MIN_PASSWORD_LENGTH = 8
ADDRESS_MAX = 320
LOCAL_PART_MAX = 64
DOMAIN_MAX = 253
QUOTA_MAX = 2**63 - 1

# Fields that update() may change.
UPDATABLE = ("name", "secret", "description", "email", "quota", "timezone")

_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


class DirectoryError(ValueError):
    """
    A directory request that cannot be done; the message says what and
    which value.

    @ivar field: what of the principal is at fault (C{"name"}, C{"kind"},
        C{"address"}, C{"members"}, C{"secret"}, C{"quota"},
        C{"timezone"}, C{"description"}), or C{None}.
    """

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


class PrincipalExists(DirectoryError):
    """
    A principal with that name already exists.
    """


class PrincipalNotFound(DirectoryError):
    """
    No principal has that name.
    """


class AddressInUse(DirectoryError):
    """
    An address already belongs to a principal, or a domain still has
    addresses.
    """


class InvalidPrincipal(DirectoryError):
    """
    A value or a combination that the directory does not accept.
    """


# Validation that needs no data.


def _check_kind(kind):
    if kind not in KINDS:
        raise InvalidPrincipal(
            f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}", field="kind"
        )
    return kind


def _lookup_name(name):
    if not isinstance(name, str):
        raise InvalidPrincipal(f"a principal name must be a string, not {name!r}", field="name")
    return name.lower()


def _check_name(kind, name):
    name = _lookup_name(name)
    if not name:
        raise InvalidPrincipal("a principal name cannot be empty", field="name")
    if len(name) > NAME_MAX:
        raise InvalidPrincipal(
            f"name {name[:40]!r}... is longer than {NAME_MAX} characters", field="name"
        )
    if any(char.isspace() or not char.isprintable() for char in name):
        raise InvalidPrincipal(
            f"name {name!r} contains whitespace or control characters", field="name"
        )
    if kind == DOMAIN:
        _check_domain_name(name)
    return name


def _check_domain_name(name):
    labels = name.split(".")
    # An all-digit last label would make an IP address look like a domain.
    if (
        len(name) > DOMAIN_MAX
        or not all(_DNS_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise InvalidPrincipal(
            f"{name!r} is not a domain name (dot-separated labels of letters, digits "
            "and inner hyphens; write international names in their xn-- form)",
            field="name",
        )


def _check_address(address):
    """
    @return: (the address lower-cased, its domain).
    """
    if not isinstance(address, str):
        raise InvalidPrincipal(
            f"an e-mail address must be a string, not {address!r}", field="address"
        )
    address = address.lower()
    local, at, domain = address.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or "@" in local
        or len(local) > LOCAL_PART_MAX
        or len(address) > ADDRESS_MAX
        or any(char.isspace() or not char.isprintable() for char in address)
    ):
        raise InvalidPrincipal(
            f"{address!r} is not an e-mail address of the form local@domain", field="address"
        )
    return address, domain


def _check_quota(quota):
    if not isinstance(quota, int) or isinstance(quota, bool) or not 0 <= quota <= QUOTA_MAX:
        raise InvalidPrincipal(
            f"quota {quota!r} must be a whole number of bytes >= 0", field="quota"
        )
    return quota


def _check_timezone(timezone):
    if timezone is None:
        return None
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidPrincipal(f"unknown time zone {timezone!r}", field="timezone") from None
    return timezone


def _check_description(description):
    if description is not None and not isinstance(description, str):
        raise InvalidPrincipal(
            f"a description must be a string, not {description!r}", field="description"
        )
    return description


def _check_secret(secret):
    if secret is not None and (
        not isinstance(secret, str) or len(secret.strip()) < MIN_PASSWORD_LENGTH
    ):
        raise InvalidPrincipal(
            f"a secret must be a string of at least {MIN_PASSWORD_LENGTH} characters "
            "(spaces around it do not count)",
            field="secret",
        )
    return secret


def _as_tuple(values):
    # A lone string is one item, not a sequence of characters.
    return (values,) if isinstance(values, str) else tuple(values)


@dataclass(frozen=True)
class _NewPrincipal:
    """
    A validated create request, with the secret already hashed.
    """

    kind: str
    name: str
    secret_hash: str
    description: str
    email: str
    aliases: tuple
    members: tuple
    quota: int
    timezone: str
    created_at: int


def _new_principal(kind, name, secret, description, email, aliases, members, quota, timezone):
    """
    Validate a create request; the secret and time are filled in later.
    """
    _check_kind(kind)
    name = _check_name(kind, name)
    if secret is not None and kind != INDIVIDUAL:
        raise InvalidPrincipal(
            f"{name!r}: only individuals have a secret, not a {kind}", field="secret"
        )
    _check_secret(secret)
    aliases = tuple(_check_address(alias)[0] for alias in _as_tuple(aliases))
    if email is not None:
        email = _check_address(email)[0]
    if kind == DOMAIN and (email is not None or aliases):
        raise InvalidPrincipal(f"domain {name!r} cannot have e-mail addresses", field="address")
    addresses = ([email] if email else []) + list(aliases)
    repeated = sorted({a for a in addresses if addresses.count(a) > 1})
    if repeated:
        raise InvalidPrincipal(f"address {repeated[0]} is given more than once", field="address")
    members = tuple(_lookup_name(member) for member in _as_tuple(members))
    if members and kind not in MEMBER_KINDS:
        raise InvalidPrincipal(
            f"{name!r} is a {kind}; only groups and lists have members", field="members"
        )
    return _NewPrincipal(
        kind=kind, name=name, secret_hash=None, description=_check_description(description),
        email=email, aliases=aliases, members=members, quota=_check_quota(quota),
        timezone=_check_timezone(timezone), created_at=0,
    )


def _check_changes(changes):
    unknown = sorted(set(changes) - set(UPDATABLE))
    if unknown:
        raise InvalidPrincipal(
            f"cannot update {unknown[0]!r}; updatable: {', '.join(UPDATABLE)}"
        )
    if not changes:
        raise InvalidPrincipal("an update needs at least one change")
    checked = dict(changes)
    for field, check in (
        ("secret", _check_secret),
        ("description", _check_description),
        ("quota", _check_quota),
        ("timezone", _check_timezone),
    ):
        if field in checked:
            checked[field] = check(checked[field])
    if checked.get("email") is not None:
        checked["email"] = _check_address(checked["email"])[0]
    return checked


def _check_replace(changes, addresses, members):
    """
    Validate a replace request (L{_build_replace}) before anything is read.

    @return: C{(changes, addresses, members)}, normalised.
    """
    changes = _check_changes(dict(changes)) if changes else {}
    if "email" in changes:
        raise InvalidPrincipal(
            "give the primary address in addresses, not in changes", field="address"
        )
    if addresses is not None:
        email, aliases = addresses
        addresses = (
            None if email is None else _check_address(email)[0],
            [_check_address(alias)[0] for alias in aliases],
        )
    if members is not None:
        members = [_lookup_name(member) for member in members]
    return changes, addresses, members


# Rules that need data; these read through the builder's Draft, so that
# each sees what the batch built so far (a principal created before it in
# the same batch, an address another object of it released).


@dataclass(frozen=True)
class _Row:
    # The fields of a principal that membership rules look at.
    id: int
    kind: str
    name: str


@dataclass(frozen=True)
class _Owner:
    principal_id: int
    name: str
    is_alias: bool


def _row(found):
    return None if found is None else _Row(found["id"], found["kind"], found["name"])


def _require(draft, name):
    row = _row(draft.first("principals", name=name))
    if row is None:
        raise PrincipalNotFound(f"no principal named {name!r}")
    return row


def _owner_of(draft, address):
    """
    @return: the L{_Owner} of C{address}, or None.
    """
    found = draft.first("principal_emails", address=address)
    if found is None:
        return None
    owner = draft.first("principals", id=found["principal_id"])
    return _Owner(found["principal_id"], owner["name"], bool(found["is_alias"]))


def _addresses_in_domain(draft, domain):
    e = schema.principal_emails
    suffix = "@" + domain
    pattern = "%" + suffix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = draft.select(
        "principal_emails",
        e.c.address.like(pattern, escape="\\"),
        lambda row: row["address"].endswith(suffix),
    )
    return sorted(row["address"] for row in rows)


def _check_address_free(draft, address, principal_id, name):
    """
    Refuse an address whose domain is not ours or that is already used.
    """
    domain = address.rpartition("@")[2]
    if draft.first("principals", name=domain, kind=DOMAIN) is None:
        raise InvalidPrincipal(
            f"{address}: {domain!r} is not a domain of this directory", field="address"
        )
    owner = _owner_of(draft, address)
    if owner is None:
        return
    if owner.principal_id == principal_id:
        raise AddressInUse(f"{address} is already an address of {name!r}", field="address")
    raise AddressInUse(f"{address} is already used by {owner.name!r}", field="address")


def _refuse_domain_in_use(draft, domain, doing):
    in_use = _addresses_in_domain(draft, domain)
    if in_use:
        shown = ", ".join(in_use[:5]) + (f" and {len(in_use) - 5} more" if len(in_use) > 5 else "")
        raise AddressInUse(
            f"cannot {doing} domain {domain!r}: addresses still use it: {shown}", field="name"
        )


def _contains(draft, group_id, wanted_id):
    """
    @return: whether C{wanted_id} is among the members of C{group_id},
        directly or through nested groups.
    """
    m = schema.principal_members
    seen, frontier = set(), {group_id}
    while frontier:
        groups = frozenset(frontier)
        found = {
            row["member_id"]
            for row in draft.select(
                "principal_members",
                m.c.group_id.in_(sorted(groups)),
                lambda row, groups=groups: row["group_id"] in groups,
            )
        }
        if wanted_id in found:
            return True
        seen |= frontier
        frontier = found - seen
    return False


def _check_member(draft, group, member):
    allowed = MEMBER_KINDS.get(group.kind)
    if allowed is None:
        raise InvalidPrincipal(
            f"{group.name!r} is a {group.kind}; only groups and lists have members",
            field="members",
        )
    if member.id == group.id:
        raise InvalidPrincipal(f"{group.name!r} cannot be a member of itself", field="members")
    if member.kind not in allowed:
        raise InvalidPrincipal(
            f"{member.name!r} is a {member.kind}; "
            f"a {group.kind} holds only {' and '.join(allowed)}s",
            field="members",
        )
    if member.kind == GROUP and _contains(draft, member.id, group.id):
        raise InvalidPrincipal(
            f"{group.name!r} cannot hold {member.name!r}: {member.name!r} already contains it",
            field="members",
        )


def _is_member(draft, group_id, member_id):
    return draft.first("principal_members", group_id=group_id, member_id=member_id) is not None


# Building batches: each builder reads through a Draft, fills its batch,
# and returns the id of the principal whose new state the caller gets back
# (None when it is gone).


def plan_directory_change(connection, batch, build, args):
    """
    The builder of one directory write for the L{AccountWriter}: C{build}
    with a L{Draft} over the batch.
    """
    return build(Draft(connection, batch), *args)


def _log(batch, principal_id, kind):
    batch.log_change(DIRECTORY_ACCOUNT, CHANGE_TYPE, str(principal_id), kind)


def _build_create(draft, new):
    batch = draft.batch
    if draft.first("principals", name=new.name) is not None:
        raise PrincipalExists(f"a principal named {new.name!r} already exists", field="name")
    principal_id = _next_principal_id(draft)
    addresses = ([(new.email, False)] if new.email else []) + [(a, True) for a in new.aliases]
    for address, _ in addresses:
        _check_address_free(draft, address, principal_id, new.name)
    group = _Row(id=principal_id, kind=new.kind, name=new.name)
    member_ids = []
    for member_name in new.members:
        if member_name == new.name:
            raise InvalidPrincipal(f"{new.name!r} cannot be a member of itself", field="members")
        member = _require(draft, member_name)
        _check_member(draft, group, member)
        member_ids.append(member.id)
    batch.insert(
        "principals", id=principal_id, kind=new.kind, name=new.name,
        description=new.description, secret=new.secret_hash, quota=new.quota,
        timezone=new.timezone, created_at=new.created_at,
    )
    for address, is_alias in addresses:
        batch.insert(
            "principal_emails", address=address, principal_id=principal_id, is_alias=is_alias
        )
    for member_id in sorted(set(member_ids)):
        batch.insert("principal_members", group_id=principal_id, member_id=member_id)
    _log(batch, principal_id, "created")
    return principal_id


def _next_principal_id(draft):
    # Ids of destroyed principals are never reused: a new account must not
    # inherit data still keyed by an old one's id. The sequence row the
    # batch itself moved counts, so several creates in one batch differ.
    sequence = draft.first("id_sequences", name=CHANGE_TYPE)
    last = None if sequence is None else sequence["last_value"]
    highest = draft.connection.execute(select(func.max(schema.principals.c.id))).scalar() or 0
    principal_id = max(last or 0, highest) + 1
    if last is None:
        draft.batch.insert("id_sequences", name=CHANGE_TYPE, last_value=principal_id)
    else:
        draft.batch.update("id_sequences", {"name": CHANGE_TYPE}, last_value=principal_id)
    return principal_id


def _build_update(draft, name, changes):
    row = _require(draft, name)
    values = {}
    if "name" in changes:
        new_name = _check_name(row.kind, changes["name"])
        if new_name != row.name:
            if draft.first("principals", name=new_name) is not None:
                raise PrincipalExists(
                    f"a principal named {new_name!r} already exists", field="name"
                )
            if row.kind == DOMAIN:
                _refuse_domain_in_use(draft, row.name, "rename")
            values["name"] = new_name
    if "secret_hash" in changes:
        if row.kind != INDIVIDUAL and changes["secret_hash"] is not None:
            raise InvalidPrincipal(
                f"{row.name!r}: only individuals have a secret, not a {row.kind}",
                field="secret",
            )
        values["secret"] = changes["secret_hash"]
    for field in ("description", "quota", "timezone"):
        if field in changes:
            values[field] = changes[field]
    if "email" in changes:
        _set_primary(draft, row, changes["email"])
    if values:
        draft.batch.update("principals", {"id": row.id}, **values)
    _log(draft.batch, row.id, "updated")
    return row.id


def _set_primary(draft, row, address):
    if row.kind == DOMAIN and address is not None:
        raise InvalidPrincipal(
            f"domain {row.name!r} cannot have e-mail addresses", field="address"
        )
    found = draft.first("principal_emails", principal_id=row.id, is_alias=False)
    current = None if found is None else found["address"]
    if address == current:
        return
    batch = draft.batch
    if address is not None:
        owner = _owner_of(draft, address)
        if owner is not None and owner.principal_id == row.id:
            # One of its own aliases becomes the primary address.
            batch.delete("principal_emails", address=address)
        else:
            _check_address_free(draft, address, row.id, row.name)
    if current is not None:
        batch.delete("principal_emails", address=current)
    if address is not None:
        batch.insert("principal_emails", address=address, principal_id=row.id, is_alias=False)


def _build_delete(draft, name):
    row = _require(draft, name)
    if row.kind == DOMAIN:
        _refuse_domain_in_use(draft, row.name, "delete")
    containers = sorted(
        found["group_id"] for found in draft.rows("principal_members", member_id=row.id)
    )
    batch = draft.batch
    batch.delete("principal_emails", principal_id=row.id)
    batch.delete("principal_members", group_id=row.id)
    batch.delete("principal_members", member_id=row.id)
    batch.delete("principals", id=row.id)
    for group_id in containers:
        _log(batch, group_id, "updated")
    _log(batch, row.id, "destroyed")
    return None


def _build_add_alias(draft, name, address):
    row = _require(draft, name)
    if row.kind == DOMAIN:
        raise InvalidPrincipal(
            f"domain {row.name!r} cannot have e-mail addresses", field="address"
        )
    _check_address_free(draft, address, row.id, row.name)
    draft.batch.insert("principal_emails", address=address, principal_id=row.id, is_alias=True)
    _log(draft.batch, row.id, "updated")
    return row.id


def _build_remove_alias(draft, name, address):
    row = _require(draft, name)
    owner = _owner_of(draft, address)
    if owner is None or owner.principal_id != row.id:
        raise InvalidPrincipal(f"{address} is not an alias of {row.name!r}", field="address")
    if not owner.is_alias:
        raise InvalidPrincipal(
            f"{address} is the primary address of {row.name!r}; change it with update(email=...)",
            field="address",
        )
    draft.batch.delete("principal_emails", address=address)
    _log(draft.batch, row.id, "updated")
    return row.id


def _build_add_member(draft, group_name, member_name):
    group = _require(draft, group_name)
    member = _require(draft, member_name)
    _check_member(draft, group, member)
    if _is_member(draft, group.id, member.id):
        raise InvalidPrincipal(
            f"{member.name!r} is already a member of {group.name!r}", field="members"
        )
    draft.batch.insert("principal_members", group_id=group.id, member_id=member.id)
    _log(draft.batch, group.id, "updated")
    return group.id


def _build_remove_member(draft, group_name, member_name):
    group = _require(draft, group_name)
    member = _require(draft, member_name)
    if not _is_member(draft, group.id, member.id):
        raise InvalidPrincipal(
            f"{member.name!r} is not a member of {group.name!r}", field="members"
        )
    draft.batch.delete("principal_members", group_id=group.id, member_id=member.id)
    _log(draft.batch, group.id, "updated")
    return group.id


def _build_set_addresses(draft, name, email, aliases):
    """
    Make C{email} (or none) and C{aliases} the principal's whole set of
    addresses: one of its aliases may become the primary and the other way
    round, in one batch.
    """
    row = _require(draft, name)
    wanted = ([(email, False)] if email is not None else []) + [(a, True) for a in aliases]
    addresses = [address for address, _ in wanted]
    if len(set(addresses)) != len(addresses):
        raise InvalidPrincipal(f"an address of {row.name!r} is given twice", field="address")
    if row.kind == DOMAIN and wanted:
        raise InvalidPrincipal(
            f"domain {row.name!r} cannot have e-mail addresses", field="address"
        )
    current = {found["address"] for found in draft.rows("principal_emails", principal_id=row.id)}
    for address in addresses:
        if address not in current:
            _check_address_free(draft, address, row.id, row.name)
    batch = draft.batch
    for address in sorted(current):
        batch.delete("principal_emails", address=address)
    for address, is_alias in wanted:
        batch.insert("principal_emails", address=address, principal_id=row.id, is_alias=is_alias)
    _log(batch, row.id, "updated")
    return row.id


def _build_set_members(draft, name, member_names):
    """
    Make C{member_names} the whole membership of a group or list.
    """
    group = _require(draft, name)
    members = [_require(draft, member_name) for member_name in member_names]
    for member in members:
        _check_member(draft, group, member)
    batch = draft.batch
    batch.delete("principal_members", group_id=group.id)
    for member_id in sorted({member.id for member in members}):
        batch.insert("principal_members", group_id=group.id, member_id=member_id)
    _log(batch, group.id, "updated")
    return group.id


def _build_replace(draft, name, changes, addresses, member_names):
    """
    Several changes to one principal in one batch: addresses and members
    first (they find the principal by its current name), then the fields
    of L{_build_update}, a rename included.
    """
    principal_id = _require(draft, name).id
    if addresses is not None:
        _build_set_addresses(draft, name, *addresses)
    if member_names is not None:
        _build_set_members(draft, name, member_names)
    if changes:
        _build_update(draft, name, changes)
    return principal_id
