"""The plan: what applying would change, at the level an administrator thinks in.

A plan is a value, like octoDNS's: typed resource changes (mailboxes with their addresses, GWART
routes, DNS records, zone serials, hosts), the runtime actions they imply, drift found on disk,
and the safety findings that `raise_if_unsafe` turns into a refusal unless forced.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.rdatatype
import dns.zone
import orjson
from dns.exception import DNSException

from mailwright.compiler.gal import RECIPIENT_INDENT, recipient_line
from mailwright.runtime.launcher import runtime_action
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
        return {"create": "+", "update": "~", "delete": "-"}[self.value]


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
        before = self.before.shown() if self.before else {}
        after = self.after.shown() if self.after else {}
        raw_before = self.before.attributes if self.before else {}
        raw_after = self.after.attributes if self.after else {}
        return [
            (k, before.get(k), after.get(k))
            for k in sorted(set(raw_before) | set(raw_after))
            if raw_before.get(k) != raw_after.get(k)
        ]


@dataclass(frozen=True)
class RuntimeAction:
    host: str  # "<org>/<server>"
    action: str  # start, restart, reload, stop
    reason: str


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
        return {a: sum(c.action is a for c in self.changes) for a in Action}

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
    gal: Mapping[str, str] | None = None,
) -> Iterable[Resource]:
    """The resources of artifacts `names` (default: all) in `files`; of the GAL (its lines by
    alias, default: read from `files`), only the recipients `aliases` (default: all)."""
    names = set(files) if names is None else names
    hosts = {n for n in names if n.startswith("hosts/")}
    if aliases is None or aliases:
        gal = _gal(files) if gal is None else gal
        passwords = _password_hashes(files, hosts)
        for alias in sorted(gal.keys() if aliases is None else aliases & gal.keys()):
            yield from _recipient(organization, orjson.loads(gal[alias]), passwords)
    if "gwart.json" in names and "gwart.json" in files:
        yield from _routes(organization, files["gwart.json"])
    for name in sorted(names & set(files)):
        if name.startswith("zones/"):
            origin = name.removeprefix("zones/").removesuffix(".zone")
            yield from _zone_resources(organization, origin, files[name])
        elif name.startswith("hosts/"):
            server = name.removeprefix("hosts/").removesuffix(".json")
            yield _host(organization, server, files[name])


def _recipient(
    organization: str, entry: dict[str, Any], passwords: dict[str, str]
) -> Iterable[Resource]:
    yield _mailbox(organization, entry, passwords)


def _routes(organization: str, text: str) -> Iterable[Resource]:
    for route in orjson.loads(text)["routes"]:
        space = route["address_space"] or "(any)"
        via = route["gateway"] or "(local)"
        attributes = {k: route[k] for k in ("cost", "scope", "site", "location")}
        name = f"{organization} {route['type']}:{space} via {via}"
        yield Resource("route", name, organization, attributes)


def _password_hashes(files: Mapping[str, str], hosts: set[str]) -> dict[str, str]:
    """Every mailbox's hash, from the host configs `hosts` (their home servers')."""
    hashes = {}
    for name in hosts & set(files):
        for mailbox in orjson.loads(files[name])["mailboxes"]:
            hashes[mailbox["alias"]] = mailbox["password_hash"]
    return hashes


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
        names = {n for n in set(was) | set(now) if was.get(n) != now.get(n)}
        old_gal, new_gal, totals[organization] = (
            _changed_gal(was, now) if "gal.json" in names else ({}, {}, 0)
        )
        # A recipient's record or password hash can change only if its GAL line or its home
        # server's host config changed.
        aliases = {a for a in old_gal.keys() | new_gal.keys() if old_gal.get(a) != new_gal.get(a)}
        if passwords := _changed_passwords(was, now, names) - aliases:
            aliases |= passwords
            old_gal |= {a: r for a, r in _gal(was).items() if a in passwords}
            new_gal |= {a: r for a, r in _gal(now).items() if a in passwords}
        for side, files, gal in ((before, was, old_gal), (after, now, new_gal)):
            for resource in _organization_resources(organization, files, names, aliases, gal):
                side[resource.address] = resource
    return before, after, totals


def _changed_passwords(was: Mapping[str, str], now: Mapping[str, str], names: set[str]) -> set[str]:
    hosts = {n for n in names if n.startswith("hosts/")}
    old, new = _password_hashes(was, hosts), _password_hashes(now, hosts)
    return {a for a in set(old) | set(new) if old.get(a) != new.get(a)}


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


def _host(organization: str, server: str, text: str) -> Resource:
    config = orjson.loads(text)
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
    changes = []
    for address in set(before) | set(after):
        old, new = before.get(address), after.get(address)
        if old is None:
            changes.append(ResourceChange(Action.CREATE, None, new))
        elif new is None:
            changes.append(ResourceChange(Action.DELETE, old, None))
        elif old.attributes != new.attributes:
            changes.append(ResourceChange(Action.UPDATE, old, new))
    return sorted(_renames(changes), key=lambda c: (KIND_ORDER[c.resource.kind], c.resource.name))


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
    kept = [paired.get(id(c), c) for c in changes]
    return list({id(c): c for c in kept}.values())


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
    findings = []
    # Only mailboxes and records count towards the blast radius.
    deleted = [
        c.resource
        for c in changes
        if c.action is Action.DELETE and c.resource.kind in ("mailbox", "record")
    ]
    if mailboxes is None:
        mailboxes = {}
        for resource in before.values():
            if resource.kind == "mailbox":
                mailboxes[resource.organization] = mailboxes.get(resource.organization, 0) + 1
    groups: dict[tuple[str, str], int] = {
        ("mailbox", f"organization {organization}"): count
        for organization, count in mailboxes.items()
    }
    for resource in before.values():
        if resource.kind == "record":
            groups[_group(resource)] = groups.get(_group(resource), 0) + 1
    for group, total in sorted(groups.items()):
        removed = sum(_group(r) == group for r in deleted)
        if total >= MIN_FOR_RATIO and removed > MAX_REMOVED_RATIO * total:
            kind, where = group
            plural = "mailboxes" if kind == "mailbox" else f"{kind}s"
            findings.append(f"removes {removed} of {total} {plural} of {where} (over 30%)")
    zones = {r.name for r in before.values() if r.kind == "zone"}
    for change in changes:
        resource = change.resource
        if (
            resource.kind == "record"
            and resource.name.split(" ", 2)[1] == "NS"
            and resource.attributes["zone"] in zones
        ):
            findings.append(f"changes an NS record: {change.action.symbol} {resource.name}")
    return findings


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
    return Plan(changes, actions, drifted, unsafe, mail_warnings(changes))


def mail_warnings(changes: Iterable[ResourceChange]) -> list[str]:
    """Addresses that an update takes from a mailbox: mail to them is refused from now on."""
    found = []
    for change in changes:
        if change.resource.kind != "mailbox" or change.action is not Action.UPDATE:
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
