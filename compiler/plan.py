"""The plan: what applying would change, at the level an administrator thinks in.

A plan is a value, like octoDNS's: typed resource changes (mailboxes with their addresses, GWART
routes, DNS records, zone serials, hosts), the runtime actions they imply, drift found on disk,
and the safety findings that `raise_if_unsafe` turns into a refusal unless forced.
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import dns.rdatatype
import dns.zone
import orjson
from dns.exception import DNSException

from mailwright.compiler.gal import RECIPIENT_INDENT, recipient_line
from mailwright.compiler.zonefile import read_compiled_zone
from mailwright.runtime.contract import RuntimeAction
from mailwright.runtime.host.change import runtime_action
from mailwright.schema.loader import gc_paused

SENSITIVE = "(sensitive)"
# Blast radius: removing more than this share of mailboxes or of a zone's records, once there
# are at least MIN_FOR_RATIO of them, needs --force; so does any change of an NS record.
MAX_REMOVED_RATIO = 0.30
MIN_FOR_RATIO = 10


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"

    @property
    def symbol(self) -> str:
        return SYMBOLS[self]


SYMBOLS = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-"}


class UnsafePlanError(Exception):
    def __init__(self, reasons: Iterable[str]) -> None:
        self.reasons = list(reasons)
        super().__init__("refusing to apply without --force: " + "; ".join(self.reasons))


@dataclass(frozen=True)
class Resource:
    kind: str  # mailbox, route, record, zone, host
    name: str
    organization: str
    attributes: Mapping[str, Any]
    sensitive: frozenset[str] = frozenset()

    @property
    def address(self) -> str:
        return f"{self.kind} {self.name}"

    def shown(self) -> dict[str, Any]:
        """Attributes as they may be printed: secrets masked."""
        return {k: SENSITIVE if k in self.sensitive else v for k, v in self.attributes.items()}

    def listed(self) -> list[tuple[str, Any]]:
        """(attribute, value) of each attribute that is set (not None), by name, secrets
        masked: what a plan shows of a resource created or deleted."""
        hidden = self.sensitive
        return [
            (k, SENSITIVE if k in hidden else v)
            for k, v in sorted(self.attributes.items())
            if v is not None
        ]


@dataclass(frozen=True)
class ResourceChange:
    action: Action
    before: Resource | None
    after: Resource | None

    @property
    def resource(self) -> Resource:
        found = self.after or self.before
        assert found is not None
        return found

    @property
    def address(self) -> str:
        return self.resource.address

    @property
    def renamed_from(self) -> str | None:
        """The old name of a renamed resource (an update whose name changed)."""
        if self.before and self.after and self.before.name != self.after.name:
            return self.before.name
        return None

    def changed(self) -> list[tuple[str, Any, Any]]:
        """(attribute, before, after) for each attribute that differs, secrets masked."""
        if self.before is None or self.after is None:
            return self._every_attribute()
        before = self.before.shown() if self.before else {}
        after = self.after.shown() if self.after else {}
        raw_before = self.before.attributes if self.before else {}
        raw_after = self.after.attributes if self.after else {}
        return [
            (k, before.get(k), after.get(k))
            for k in sorted(set(raw_before) | set(raw_after))
            if raw_before.get(k) != raw_after.get(k)
        ]

    def _every_attribute(self) -> list[tuple[str, Any, Any]]:
        """changed() of a resource created or deleted: each attribute set, against None."""
        if self.after is None:
            assert self.before is not None
            return [(k, v, None) for k, v in self.before.listed()]
        return [(k, None, v) for k, v in self.after.listed()]


@dataclass(frozen=True)
class Drift:
    artifact: str
    problem: str  # modified, deleted, added


@dataclass
class Plan:
    changes: list[ResourceChange]
    runtime_actions: list[RuntimeAction]
    drift: list[Drift]
    unsafe: list[str] = field(default_factory=list)
    # What applying does to mail that the changes alone do not say (addresses that stop
    # working, mail that goes to retained/).
    warnings: list[str] = field(default_factory=list)
    # change address -> (messages, bytes) a home server change moves, counted in the stores
    moves: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes or self.drift or self.runtime_actions)

    def counts(self) -> dict[Action, int]:
        counted = Counter(c.action for c in self.changes)
        return {a: counted[a] for a in Action}

    def summary_line(self) -> str:
        counts = self.counts()
        return (
            f"Plan: {counts[Action.CREATE]} to add, {counts[Action.UPDATE]} to change, "
            f"{counts[Action.DELETE]} to destroy."
        )

    def raise_if_unsafe(self, force: bool) -> None:
        if self.unsafe and not force:
            raise UnsafePlanError(self.unsafe)


def resources(files: Mapping[str, str]) -> dict[str, Resource]:
    """Every resource described by a compiled tree (`<org>/<artifact>` -> text)."""
    found: dict[str, Resource] = {}
    for organization, own in sorted(_by_organization(files).items()):
        for resource in _organization_resources(organization, own):
            found[resource.address] = resource
    return found


def _by_organization(files: Mapping[str, str]) -> dict[str, dict[str, str]]:
    grouped: dict[str, dict[str, str]] = {}
    for name, text in files.items():
        organization, slash, artifact = name.partition("/")
        if slash:
            grouped.setdefault(organization, {})[artifact] = text
    return grouped


def _gal(files: Mapping[str, str]) -> dict[str, str]:
    """The GAL's recipients: alias -> the record as compact JSON."""
    return _by_alias(_recipient_lines(files["gal.json"])) if "gal.json" in files else {}


def _recipient_lines(text: str) -> list[str]:
    """gal.json's recipient lines as written: one a line (see Gal.as_text). Any other layout
    (edited by hand, or older) is parsed and laid out alike."""
    lines = text.split("\n")
    if lines[2:3] == ['  "recipients": ['] and lines[-3:] == ["  ]", "}", ""]:
        return lines[3:-3]
    return [f"{RECIPIENT_INDENT}{recipient_line(r)}," for r in orjson.loads(text)["recipients"]]


def _by_alias(lines: Iterable[str]) -> dict[str, str]:
    records = {}
    for line in lines:
        record = line.strip().removesuffix(",")
        # `{"alias":"<alias>",...`: keys are sorted, and an alias is a dot-atom (RFC 5321
        # §4.1.2), with no quote or comma to end it early.
        records[record[ALIAS_AT : record.index(",") - 1]] = record
    return records


ALIAS_AT = len('{"alias":"')


def _changed_gal(
    was: Mapping[str, str], now: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, str], int]:
    """The recipients whose gal.json lines differ, before and after (alias -> record), and how
    many there were: a set difference of 100,000 lines, not the parsing of them all."""
    old, new = (_recipient_lines(f["gal.json"]) if "gal.json" in f else [] for f in (was, now))
    gone, came = set(old), set(new)
    return _by_alias(gone - came), _by_alias(came - gone), len(old)


def _organization_resources(
    organization: str,
    files: Mapping[str, str],
    names: set[str] | None = None,
    aliases: set[str] | None = None,
    *,
    gal: Mapping[str, str] | None = None,
    hosts: HostFacts | None = None,
) -> Iterable[Resource]:
    """The resources of artifacts `names` (default: all) in `files`; of the GAL (its lines by
    alias, default: read from `files`), only the recipients `aliases` (default: all); what the
    host configs among `names` hold as `hosts` says (default: read from `files`)."""
    names = set(files) if names is None else names
    if hosts is None:
        hosts = _host_facts(organization, files, {n for n in names if n.startswith("hosts/")})
    if aliases is None or aliases:
        gal = _gal(files) if gal is None else gal
        for alias in sorted(gal.keys() if aliases is None else aliases & gal.keys()):
            yield _mailbox(organization, orjson.loads(gal[alias]), hosts.passwords)
    if "gwart.json" in names and "gwart.json" in files:
        yield from _routes(organization, files["gwart.json"])
    for name in sorted(names & set(files)):
        if name.startswith("zones/"):
            origin = name.removeprefix("zones/").removesuffix(".zone")
            yield from _zone_resources(organization, origin, files[name])
        elif name.startswith("hosts/"):
            yield hosts.resources[name]


def _routes(organization: str, text: str) -> Iterable[Resource]:
    for route in orjson.loads(text)["routes"]:
        space = route["address_space"] or "(any)"
        via = route["gateway"] or "(local)"
        attributes = {k: route[k] for k in ("cost", "scope", "site", "location")}
        name = f"{organization} {route['type']}:{space} via {via}"
        yield Resource("route", name, organization, attributes)


@dataclass(frozen=True)
class HostFacts:
    """What the plan takes from some host configs, each parsed once (a first plan of 100,000
    mailboxes has 1,000 of them, 76 MB): every mailbox's password hash (their home servers'
    configs), and each config's host resource by artifact name."""

    passwords: dict[str, str]
    resources: dict[str, Resource]


def _host_facts(organization: str, files: Mapping[str, str], hosts: set[str]) -> HostFacts:
    facts = HostFacts({}, {})
    for name in hosts & set(files):
        config = orjson.loads(files[name])
        for mailbox in config["mailboxes"]:
            facts.passwords[mailbox["alias"]] = mailbox["password_hash"]
        server = name.removeprefix("hosts/").removesuffix(".json")
        facts.resources[name] = _host(organization, server, files[name], config)
    return facts


def _changed_resources(
    old: Mapping[str, str], new: Mapping[str, str]
) -> tuple[dict[str, Resource], dict[str, Resource], dict[str, int]]:
    """Resources of the artifacts that differ, on both sides, and each organization's mailbox
    count before: a one-mailbox change in a large organization parses a handful of files."""
    old_orgs, new_orgs = _by_organization(old), _by_organization(new)
    before: dict[str, Resource] = {}
    after: dict[str, Resource] = {}
    totals: dict[str, int] = {}
    for organization in sorted(set(old_orgs) | set(new_orgs)):
        was, now = old_orgs.get(organization, {}), new_orgs.get(organization, {})
        totals[organization] = _changed_in_organization(organization, was, now, before, after)
    return before, after, totals


def _changed_in_organization(
    organization: str,
    was: Mapping[str, str],
    now: Mapping[str, str],
    before: dict[str, Resource],
    after: dict[str, Resource],
) -> int:
    """One organization's part of _changed_resources, added to `before` and `after`; returns
    its mailbox count before."""
    names = {n for n in set(was) | set(now) if was.get(n) != now.get(n)}
    old_gal, new_gal, total = _changed_gal(was, now) if "gal.json" in names else ({}, {}, 0)
    # A recipient's record or password hash can change only if its GAL line or its home
    # server's host config changed.
    aliases = {a for a in old_gal.keys() | new_gal.keys() if old_gal.get(a) != new_gal.get(a)}
    hosts = {n for n in names if n.startswith("hosts/")}
    old_hosts, new_hosts = (_host_facts(organization, f, hosts) for f in (was, now))
    if passwords := _changed_passwords(old_hosts.passwords, new_hosts.passwords) - aliases:
        aliases |= passwords
        old_gal |= {a: r for a, r in _gal(was).items() if a in passwords}
        new_gal |= {a: r for a, r in _gal(now).items() if a in passwords}
    for side, files, gal, facts in (
        (before, was, old_gal, old_hosts),
        (after, now, new_gal, new_hosts),
    ):
        for resource in _organization_resources(
            organization, files, names, aliases, gal=gal, hosts=facts
        ):
            side[resource.address] = resource
    return total


def _changed_passwords(old: Mapping[str, str], new: Mapping[str, str]) -> set[str]:
    return {a for a in old.keys() | new.keys() if old.get(a) != new.get(a)}


ADDRESS = "address."  # a primary address attribute: address.SMTP, address.X400, address.MS


def _mailbox(organization: str, entry: dict[str, Any], passwords: dict[str, str]) -> Resource:
    """A mailbox is the directory object (organization, alias), as in Exchange: its addresses,
    names, home server and settings are attributes, so changing any of them is an update."""
    alias = entry["alias"]
    attributes: dict[str, Any] = {
        "alias": alias,
        "display_name": entry["display_name"],
        "site": entry["site"],
        "home_server": entry["home_server"],
        "size_limit": entry["size_limit"],
        "password": passwords.get(alias),
        "secondary_addresses": entry["secondary"],
    }
    for kind, address in entry["primary"].items():
        attributes[f"{ADDRESS}{kind}"] = address
    for key, value in entry["protocols"]["pop3"].items():
        attributes[f"pop3.{key}"] = value
    if previous := entry.get("previous_aliases"):
        attributes["previous_aliases"] = previous
    return Resource(
        "mailbox", f"{organization}/{alias}", organization, attributes, frozenset({"password"})
    )


def addresses(mailbox: Resource) -> dict[str, str]:
    """A mailbox's addresses, primary and secondary, as `TYPE:address`, by their casefold."""
    attributes = mailbox.attributes
    texts = [
        f"{k.removeprefix(ADDRESS)}:{v}" for k, v in attributes.items() if k.startswith(ADDRESS)
    ]
    for text in attributes["secondary_addresses"]:
        kind, _, address = text.partition(":")
        texts.append(f"{kind.upper()}:{address}")
    return {text.casefold(): text for text in texts}


def _zone_resources(organization: str, origin: str, text: str) -> Iterable[Resource]:
    compiled = read_compiled_zone(origin, text)
    if compiled is None:
        yield from _parsed_zone_resources(organization, origin, text)
        return
    yield Resource("zone", origin, organization, {"serial": compiled.serial})
    for name, kind, rdata, ttl in compiled.records:
        yield Resource(
            "record", f"{name} {kind} {rdata}", organization, {"zone": origin, "ttl": ttl}
        )


def _parsed_zone_resources(organization: str, origin: str, text: str) -> Iterable[Resource]:
    """A zone's resources through dnspython's parser: any zone file, as edited by hand."""
    zone = dns.zone.from_text(text, origin, relativize=False, check_origin=False)
    for name, node in sorted(zone.nodes.items()):
        for rdataset in node.rdatasets:
            if rdataset.rdtype == dns.rdatatype.SOA:
                yield Resource("zone", origin, organization, {"serial": rdataset[0].serial})
                continue
            kind = dns.rdatatype.to_text(rdataset.rdtype)
            for rdata in rdataset:
                yield Resource(
                    "record",
                    f"{name} {kind} {rdata.to_text()}",
                    organization,
                    {"zone": origin, "ttl": rdataset.ttl},
                )


def _host(organization: str, server: str, text: str, config: dict[str, Any]) -> Resource:
    attributes = {
        "roles": config["server"]["roles"],
        "services": config["server"]["services"],
        "mailboxes": len(config["mailboxes"]),
        "config": _digest(text)[:12],
    }
    return Resource("host", f"{organization}/{server}", organization, attributes)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


KIND_ORDER = {"mailbox": 0, "route": 1, "zone": 2, "record": 3, "host": 4}


def diff(before: Mapping[str, Resource], after: Mapping[str, Resource]) -> list[ResourceChange]:
    """The changes, by kind (KIND_ORDER) then name. Sorted a kind at a time on the name alone:
    a string sort, where a key of (order, name) tuples made sorting a first plan of 100,000
    mailboxes (400,000 changes) take seconds."""
    by_kind: dict[str, list[tuple[str, ResourceChange]]] = {kind: [] for kind in KIND_ORDER}
    for address, new in after.items():
        old = before.get(address)
        if old is None:
            by_kind[new.kind].append((new.name, ResourceChange(Action.CREATE, None, new)))
        elif old.attributes != new.attributes:
            by_kind[new.kind].append((new.name, ResourceChange(Action.UPDATE, old, new)))
    for address, old in before.items():
        if address not in after:
            by_kind[old.kind].append((old.name, ResourceChange(Action.DELETE, old, None)))
    changes = []
    for kind in sorted(KIND_ORDER, key=KIND_ORDER.__getitem__):
        changes += [change for _, change in sorted(by_kind[kind], key=itemgetter(0))]
    return _renames(changes)


def _renames(changes: list[ResourceChange]) -> list[ResourceChange]:
    """A removed mailbox whose alias a new one lists in `previous_aliases` was renamed: one
    update from the old to the new, not a removal and a creation (Terraform's `moved`)."""
    removed = {
        c.resource.name.casefold(): c
        for c in changes
        if c.action is Action.DELETE and c.resource.kind == "mailbox"
    }
    paired: dict[int, ResourceChange] = {}
    for change in changes:
        new = change.after
        if change.action is not Action.CREATE or new is None or new.kind != "mailbox":
            continue
        for previous in new.attributes.get("previous_aliases", ()):
            old = removed.pop(f"{new.organization}/{previous}".casefold(), None)
            if old is not None:
                paired[id(old)] = paired[id(change)] = ResourceChange(
                    Action.UPDATE, old.before, new
                )
                break
    if not paired:
        return changes
    kept = {id(c): c for c in (paired.get(id(c), c) for c in changes)}.values()
    return sorted(kept, key=lambda c: (KIND_ORDER[c.resource.kind], c.resource.name))


def runtime_actions(old: Mapping[str, str], new: Mapping[str, str]) -> list[RuntimeAction]:
    """A new host starts, a removed one stops; a changed one restarts only if what it listens
    on changed, and reloads for anything else, as does a host whose organization's shared
    artifacts (GAL, GWART, servers, zones) changed. The runtime decides which (the launcher's
    runtime_action), as its supervisor does."""
    actions = []
    shared: dict[str, list[str]] = {}
    for name in sorted(n for n in set(old) | set(new) if "/hosts/" in n):
        organization, _, file = name.partition("/hosts/")
        if organization not in shared:
            shared[organization] = _shared_changes(organization, old, new)
        decided = runtime_action(old.get(name), new.get(name), shared[organization])
        if decided is not None:
            host = f"{organization}/{file.removesuffix('.json')}"
            actions.append(RuntimeAction(host, *decided))
    return actions


def _shared_changes(organization: str, old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    prefix = f"{organization}/"
    names = {n for n in set(old) | set(new) if n.startswith(prefix)}
    shared = sorted(
        n.removeprefix(prefix)
        for n in names
        if n.removeprefix(prefix) in ("gal.json", "gwart.json", "servers.json")
        or n.removeprefix(prefix).startswith("zones/")
    )
    return [n for n in shared if old.get(prefix + n) != new.get(prefix + n)]


def drift(
    applied: Mapping[str, Mapping[str, Any]],
    on_disk: Mapping[str, str],
    new: Mapping[str, str] | None = None,
) -> list[Drift]:
    """Artifacts edited or deleted on disk since they were applied. An artifact the new tree
    holds unchanged (same digest in its manifest) and that reads the same on disk is not
    hashed again: at 100,000 mailboxes that is 180 MB not to hash."""
    found = []
    for organization, manifest in sorted(applied.items()):
        fresh = _artifact_digests(new or {}, organization)
        for name, digest in sorted(manifest.get("artifacts", {}).items()):
            path = f"{organization}/{name}"
            text = on_disk.get(path)
            if text is None:
                found.append(Drift(path, "deleted"))
            elif fresh.get(name) == digest and (new or {}).get(path) == text:
                continue
            elif _digest(text) != digest:
                found.append(Drift(path, "modified"))
    return found


def _artifact_digests(tree: Mapping[str, str], organization: str) -> dict[str, str]:
    manifest = tree.get(f"{organization}/manifest.json")
    if manifest is None:
        return {}
    digests: dict[str, str] = orjson.loads(manifest)["artifacts"]
    return digests


def unsafe_findings(
    before: Mapping[str, Resource],
    changes: list[ResourceChange],
    mailboxes: Mapping[str, int] | None = None,
) -> list[str]:
    """`before` holds every record of each changed zone; `mailboxes` counts each organization's
    mailboxes before (default: those in `before`)."""
    return _blast_radius(before, changes, mailboxes) + _ns_changes(before, changes)


def _blast_radius(
    before: Mapping[str, Resource],
    changes: list[ResourceChange],
    mailboxes: Mapping[str, int] | None,
) -> list[str]:
    """Removals of over 30% of an organization's mailboxes or of a zone's records."""
    # Only mailboxes and records count towards the blast radius.
    delete = Action.DELETE  # a local: the loop runs over every change of a first plan
    deleted = [
        c.before
        for c in changes
        if c.action is delete and c.before is not None and c.before.kind in ("mailbox", "record")
    ]
    if mailboxes is None:
        mailboxes = Counter(r.organization for r in before.values() if r.kind == "mailbox")
    groups: dict[tuple[str, str], int] = {
        ("mailbox", f"organization {organization}"): count
        for organization, count in mailboxes.items()
    }
    groups |= Counter(_group(r) for r in before.values() if r.kind == "record")
    # Counted once: a count for each group of each deletion was 10 million comparisons when
    # 100,000 mailboxes went from an organization with 100 zones.
    removed = Counter(_group(r) for r in deleted)
    findings = []
    for group, total in sorted(groups.items()):
        if total >= MIN_FOR_RATIO and removed[group] > MAX_REMOVED_RATIO * total:
            kind, where = group
            plural = "mailboxes" if kind == "mailbox" else f"{kind}s"
            findings.append(f"removes {removed[group]} of {total} {plural} of {where} (over 30%)")
    return findings


def _ns_changes(before: Mapping[str, Resource], changes: list[ResourceChange]) -> list[str]:
    """Any change of an NS record of a zone that is applied."""
    zones = {r.name for r in before.values() if r.kind == "zone"}
    return [
        f"changes an NS record: {change.action.symbol} {resource.name}"
        for change in changes
        if (resource := change.after or change.before) is not None
        and resource.kind == "record"
        and resource.name.split(" ", 2)[1] == "NS"
        and resource.attributes["zone"] in zones
    ]


def _group(resource: Resource) -> tuple[str, str]:
    if resource.kind == "mailbox":
        return ("mailbox", f"organization {resource.organization}")
    return ("record", f"zone {resource.attributes['zone']}")


def make_plan(
    old: Mapping[str, str], applied: Mapping[str, Mapping[str, Any]], new: Mapping[str, str]
) -> Plan:
    """old: the applied tree as on disk; applied: the manifests state recorded; new: compiled."""
    drifted = drift(applied, old, new)
    broken = _unreadable(drifted, old)
    readable = {n: t for n, t in old.items() if n not in broken}
    with gc_paused():
        before, after, mailboxes = _changed_resources(readable, new)
        changes = diff(before, after)
        actions = runtime_actions(old, new)
        unsafe = unsafe_findings(before, changes, mailboxes)
        warnings = mail_warnings(changes)
    return Plan(changes, actions, drifted, unsafe, warnings)


def mail_warnings(changes: Iterable[ResourceChange]) -> list[str]:
    """Addresses that an update takes from a mailbox: mail to them is refused from now on."""
    found = []
    for change in changes:
        if change.action is not Action.UPDATE or change.resource.kind != "mailbox":
            continue
        assert change.before is not None and change.after is not None
        kept = addresses(change.after)
        for key, text in addresses(change.before).items():
            if key not in kept:
                kind, _, address = text.partition(":")
                found.append(
                    f"mailbox {change.resource.name}: mail to {text} will be refused from now "
                    f"on; to keep it, list '{kind.lower()}:{address}' in the mailbox's "
                    "proxy_addresses"
                )
    return found


def _unreadable(drifted: Iterable[Drift], files: Mapping[str, str]) -> set[str]:
    """Artifacts edited on disk into something that no longer parses: they read as absent, so
    the plan shows what restoring them brings back instead of failing."""
    broken = set()
    for item in drifted:
        if item.problem == "modified":
            organization, _, name = item.artifact.partition("/")
            try:
                list(_organization_resources(organization, {name: files[item.artifact]}))
            except (ValueError, LookupError, TypeError, AttributeError, DNSException):
                broken.add(item.artifact)
    return broken
