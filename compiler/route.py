"""`route`: one routing decision explained, the way an administrator debugs mail flow."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.name
import dns.rdatatype
import dns.zone

from mailwright.compiler.gal import GalEntry, build_gal
from mailwright.compiler.gwart import Selection, build_gwart
from mailwright.compiler.zones import render_zones
from mailwright.runtime.routing import AddressType
from mailwright.schema import LoadedSpec
from mailwright.schema.addressing import check_address


class RouteError(Exception):
    """The question itself is wrong: an unknown server or an unparseable address."""


@dataclass(frozen=True)
class MxHost:
    preference: int
    host: str
    addresses: tuple[str, ...]


@dataclass
class RouteExplanation:
    type: AddressType
    address: str
    organization: str
    from_server: str
    recipient: GalEntry | None = None
    path: list[str] = field(default_factory=list)
    selection: Selection | None = None
    mx: list[MxHost] = field(default_factory=list)
    mx_implicit: bool = False
    reason: str = ""

    @property
    def routable(self) -> bool:
        return not self.reason


def parse_address(text: str) -> tuple[AddressType, str]:
    """`TYPE:address`, or the type recognized from the address's shape."""
    prefix, sep, rest = text.partition(":")
    if sep and prefix.upper() in AddressType.__members__:
        kind, address = AddressType(prefix.upper()), rest
    elif "@" in text:
        kind, address = AddressType.SMTP, text
    elif "=" in text:
        kind, address = AddressType.X400, text
    else:
        kind, address = AddressType.MS, text
    if problem := check_address(kind, address):
        raise RouteError(problem)
    return kind, address


def explain_route(
    specs: Sequence[LoadedSpec], text: str, from_server: str, message_id: str = ""
) -> RouteExplanation:
    kind, address = parse_address(text)
    loaded, site, location = _home_of(specs, from_server)
    result = RouteExplanation(kind, address, loaded.name, from_server)
    result.recipient = build_gal(loaded).lookup(kind, address)
    if result.recipient is not None:
        home = result.recipient.row.home_server
        result.path = [from_server] + ([home] if home != from_server else [])
        return result
    domain = address.rpartition("@")[2].lower()
    if kind is AddressType.SMTP and domain in loaded.spec.organization.domains:
        result.reason = (
            f"recipient not found: {domain} is owned by {loaded.name} "
            f"and no recipient has {address}"
        )
        return result
    result.selection = build_gwart(loaded).select(
        kind, address, site, location, message_id=message_id
    )
    chosen = result.selection.chosen
    if chosen is None:
        result.reason = (
            f"no route: no GWART address space of {loaded.name} matches {kind.value}:{address}"
        )
        return result
    result.path = [from_server] + ([chosen.gateway] if chosen.gateway != from_server else [])
    if kind is AddressType.SMTP:
        result.mx, result.mx_implicit = _resolve_mx(specs, domain)
        if not result.mx:
            result.reason = f"no MX or A record for {domain} in the compiled zones"
        elif any(h.host == "." for h in result.mx):
            result.reason = f"{domain} accepts no mail (null MX, RFC 7505)"
    return result


def _home_of(specs: Sequence[LoadedSpec], name: str) -> tuple[LoadedSpec, str, str]:
    for loaded in specs:
        for site in loaded.spec.sites:
            for server in site.servers:
                if server.name.casefold() == name.casefold():
                    return loaded, site.name, server.location or ""
    known = sorted(s.name for loaded in specs for site in loaded.spec.sites for s in site.servers)
    raise RouteError(f"no server '{name}' in the given specs (servers: {', '.join(known)})")


def compiled_zones(specs: Sequence[LoadedSpec]) -> list[dns.zone.Zone]:
    today = datetime.date(2000, 1, 1)  # serials do not matter for lookups
    zones = []
    for loaded in specs:
        for zone in render_zones(loaded, {}, today):
            zones.append(dns.zone.from_text(zone.text, zone.origin, relativize=False))
    return zones


def _lookup(
    zones: Sequence[dns.zone.Zone], name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> list[str]:
    for zone in zones:
        if zone.origin is not None and name.is_subdomain(zone.origin):
            rdataset = zone.get_rdataset(name, rdtype)
            return sorted(r.to_text() for r in rdataset) if rdataset else []
    return []


def _resolve_mx(specs: Sequence[LoadedSpec], domain: str) -> tuple[list[MxHost], bool]:
    """RFC 5321 §5.1: the MX records, or the domain itself as an implicit MX of preference 0."""
    zones = compiled_zones(specs)
    name = dns.name.from_text(domain)
    hosts = []
    for text in _lookup(zones, name, dns.rdatatype.MX):
        preference, host = text.split()
        target = dns.name.from_text(host)
        hosts.append(MxHost(int(preference), host, tuple(_lookup(zones, target, dns.rdatatype.A))))
    if hosts:
        return sorted(hosts, key=lambda h: (h.preference, h.host)), False
    addresses = _lookup(zones, name, dns.rdatatype.A)
    return ([MxHost(0, name.to_text(), tuple(addresses))] if addresses else []), True
