"""DNS zone files: one BIND master file per owned domain and per /24 of server addresses.

A zone is a pure function of the spec; only its serial depends on state (the previous compile's
content hash and serial), so the same records always give the same file.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.NS
import dns.rdtypes.IN.SRV
import jinja2

from mailwright.runtime.routing import AddressType
from mailwright.schema import (
    Diagnostic,
    LoadedSpec,
    OrganizationSpec,
    Server,
    Severity,
    Zone,
)
from mailwright.schema.models import ImsConnector, Role

# RFC 7208 §3.3: a TXT character-string holds at most 255 octets; longer SPF is split.
_TXT_STRING_MAX = 255
# Types whose target must have address records (RFC 1035 §3.3.9, RFC 2782; named-checkzone -i).
_ADDRESS_TYPES = frozenset({"A", "AAAA"})


@dataclass(frozen=True)
class ZoneFile:
    origin: str  # "dcnw.com" or "0.1.10.in-addr.arpa" (no trailing dot)
    text: str  # the BIND master file
    content_hash: str  # sha256 hex of the zone's records without the serial
    serial: int  # YYYYMMDDnn


class ZoneError(ValueError):
    """Records of a zone that no name server would load; every problem of the zone at once."""

    def __init__(self, origin: str, problems: Sequence[str]) -> None:
        self.origin = origin
        self.problems = tuple(problems)
        super().__init__(f"zone {origin}: " + "; ".join(self.problems))


@dataclass(frozen=True)
class _Record:
    owner: dns.name.Name  # absolute
    type: str  # "MX"
    value: str  # presentation format, names absolute
    ttl: int | None  # None: the zone's $TTL
    rdata: dns.rdata.Rdata = field(compare=False)


@dataclass(frozen=True)
class _Soa:
    mname: str
    rname: str
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True)
class _ZoneData:
    origin: dns.name.Name
    ttl: int
    soa: _Soa
    records: tuple[_Record, ...]  # sorted, without the SOA

    @property
    def name(self) -> str:
        return self.origin.to_text(omit_final_dot=True)


def render_zones(
    loaded: LoadedSpec, previous: Mapping[str, tuple[str, int]], today: datetime.date
) -> list[ZoneFile]:
    """Every zone of the organization; previous: origin -> (content_hash, serial). By origin."""
    spec = loaded.spec
    zones = [_forward_zone(spec, zone) for zone in spec.dns]
    zones += _reverse_zones(spec, zones[0]) if zones else []
    files = [_zone_file(zone, previous, today) for zone in zones]
    return sorted(files, key=lambda f: f.origin)


# --- the organization's servers ---------------------------------------------------------------


def _servers(spec: OrganizationSpec) -> Iterator[Server]:
    for site in spec.sites:
        yield from site.servers


def _ims(server: Server) -> ImsConnector | None:
    """The server's IMS settings; the `ims` role without settings means the defaults."""
    if Role.IMS not in server.roles:
        return None
    return server.ims or ImsConnector()


def _server_named(spec: OrganizationSpec, name: str) -> Server | None:
    return next((s for s in _servers(spec) if s.name.casefold() == name.casefold()), None)


@functools.lru_cache(maxsize=65536)
def _fqdn(name: str) -> str:
    return dns.name.from_text(name).to_text()


def _zone_of(spec: OrganizationSpec, fqdn: str) -> str | None:
    """The most specific zone of the spec that holds fqdn."""
    holding = [z.domain for z in spec.dns if fqdn == z.domain or fqdn.endswith("." + z.domain)]
    return max(holding, key=len, default=None)


# --- forward zones ------------------------------------------------------------------------------


def _forward_zone(spec: OrganizationSpec, zone: Zone) -> _ZoneData:
    origin = dns.name.from_text(zone.domain)
    nameservers = _nameservers(spec, zone)
    records = [
        *(_record(origin, "@", "NS", ns) for ns in nameservers),
        *_address_records(spec, zone, origin),
        *_mx_records(spec, zone, origin),
        _spf_record(spec, origin),
        *_extra_records(zone, origin),
    ]
    data = _ZoneData(origin, zone.ttl, _soa(zone, nameservers[0]), _sorted(records))
    _check(data)
    return data


def _nameservers(spec: OrganizationSpec, zone: Zone) -> list[str]:
    """A server of the organization by its fqdn; an external host as written (ending in ".")."""
    servers = (_server_named(spec, ns) for ns in zone.nameservers)
    return [_fqdn(s.fqdn if s else ns) for s, ns in zip(servers, zone.nameservers, strict=True)]


def _soa(zone: Zone, mname: str) -> _Soa:
    s = zone.soa
    return _Soa(mname, _rname(zone), s.refresh, s.retry, s.expire, s.minimum)


def _rname(zone: Zone) -> str:
    """RFC 1035 §8: the mailbox's local part becomes the first label, its dots escaped."""
    contact = zone.soa.contact or f"hostmaster@{zone.domain}"
    local, at, domain = contact.rpartition("@")
    try:
        if not at:
            return dns.name.from_text(contact, dns.name.from_text(zone.domain)).to_text()
        return dns.name.Name([local]).concatenate(dns.name.from_text(domain)).to_text()
    except dns.exception.DNSException as exc:
        raise ZoneError(zone.domain, [f"SOA contact '{contact}': {exc}"]) from None


def _address_records(spec: OrganizationSpec, zone: Zone, origin: dns.name.Name) -> list[_Record]:
    return [
        _record(origin, _fqdn(s.fqdn), "A", str(s.ipv4))
        for s in _servers(spec)
        if _zone_of(spec, s.fqdn) == zone.domain
    ]


def _mx_records(spec: OrganizationSpec, zone: Zone, origin: dns.name.Name) -> list[_Record]:
    """One MX per inbound IMS that receives this domain's mail (RFC 5321 §5.1)."""
    records = []
    for server in _servers(spec):
        ims = _ims(server)
        if ims and ims.transfer_mode.inbound and zone.domain in (ims.domains or (zone.domain,)):
            records.append(_record(origin, "@", "MX", f"{_preference(ims)} {_fqdn(server.fqdn)}"))
    return records


def _preference(ims: ImsConnector) -> int:
    """Lower cost, more preferred: 10 x the IMS's cheapest SMTP address space (1 without any)."""
    costs = [space.cost for space in ims.address_spaces if space.type is AddressType.SMTP]
    return 10 * min(costs, default=1)


def _spf_record(spec: OrganizationSpec, origin: dns.name.Name) -> _Record:
    """RFC 7208 §4.6: the hosts allowed to send the domain's mail are the outbound IMSes."""
    senders: set[IPv4Address] = set()
    for server in _servers(spec):
        ims = _ims(server)
        if ims and ims.transfer_mode.outbound:
            senders.add(server.ipv4)
    policy = " ".join(["v=spf1", *(f"ip4:{ip}" for ip in sorted(senders)), "-all"])
    return _record(origin, "@", "TXT", _txt(policy))


def _txt(text: str) -> str:
    chunks = [text[i : i + _TXT_STRING_MAX] for i in range(0, len(text), _TXT_STRING_MAX)]
    return " ".join(f'"{chunk}"' for chunk in chunks)


def _extra_records(zone: Zone, origin: dns.name.Name) -> list[_Record]:
    return [_record(origin, r.name, r.type, r.value, r.ttl) for r in zone.records]


# --- reverse zones ------------------------------------------------------------------------------


def _reverse_zones(spec: OrganizationSpec, first: _ZoneData) -> list[_ZoneData]:
    """One in-addr.arpa zone per /24 (RFC 1035 §3.5), SOA and NS as the first forward zone's."""
    ptrs: dict[dns.name.Name, list[_Record]] = {}
    for server in _servers(spec):
        owner = dns.name.from_text(server.ipv4.reverse_pointer)
        origin = owner.parent()
        ptr = _record(origin, owner.to_text(), "PTR", _fqdn(server.fqdn))
        ptrs.setdefault(origin, []).append(ptr)
    return [
        _ZoneData(origin, first.ttl, first.soa, _sorted([*_apex_ns(first, origin), *records]))
        for origin, records in ptrs.items()
    ]


def _apex_ns(first: _ZoneData, origin: dns.name.Name) -> list[_Record]:
    apex = [r for r in first.records if r.type == "NS" and r.owner == first.origin]
    return [_record(origin, "@", "NS", r.value) for r in apex]


# --- records ------------------------------------------------------------------------------------


# `validate` and then `compile` (as `plan` runs them) render the same zones: dnspython's parsing
# of thousands of records is most of that work, and a record is a pure function of its text.
@functools.lru_cache(maxsize=65536)
def _record(
    origin: dns.name.Name, name: str, rdtype: str, value: str, ttl: int | None = None
) -> _Record:
    """A record in canonical presentation form; relative names are relative to the origin."""
    owner = dns.name.from_text(name, origin)
    rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, value, origin, relativize=False)
    return _Record(owner, dns.rdatatype.to_text(rdata.rdtype), rdata.to_text(), ttl, rdata)


def _sorted(records: Iterable[_Record]) -> tuple[_Record, ...]:
    return tuple(sorted(set(records), key=_sort_key))


def _sort_key(record: _Record) -> tuple[tuple[tuple[int, int, bytes], ...], str, bytes]:
    """By name (parents before children, RFC 4034 §6.1; numeric labels by number), type, value."""
    labels = [label.lower() for label in reversed(record.owner.labels)]
    name = tuple((0, int(x), b"") if x.isdigit() else (1, 0, x) for x in labels)
    # RFC 4034 §6.3: within an RRset, by the canonical wire form (MX preference numerically).
    return name, record.type, record.rdata.to_digestable()


def _check(zone: _ZoneData) -> None:
    """What `named-checkzone -i full` refuses, said in the spec's terms (the extra records)."""
    problems = [*_cname_conflicts(zone), *_targets_without_address(zone)]
    spf = [r for r in zone.records if r.owner == zone.origin and r.value.startswith('"v=spf1')]
    if len(spf) > 1:
        # RFC 7208 §4.5: more than one SPF record is a permanent error.
        problems.append("an extra SPF record at the apex: SPF is derived from the IMS servers")
    if problems:
        raise ZoneError(zone.name, problems)


def _cname_conflicts(zone: _ZoneData) -> Iterator[str]:
    """RFC 1034 §3.6.2 / RFC 2181 §10.1: a CNAME owner has no other data (the apex has SOA)."""
    for record in zone.records:
        if record.type != "CNAME":
            continue
        others = {r.type for r in zone.records if r.owner == record.owner} - {"CNAME"}
        if record.owner == zone.origin:
            others.add("SOA")
        if others:
            yield f"CNAME '{_owner_text(zone, record)}' has other data: {', '.join(sorted(others))}"


def _targets_without_address(zone: _ZoneData) -> Iterator[str]:
    """RFC 2181 §10.3: MX, NS and SRV targets in the zone need A or AAAA records."""
    addressed = {r.owner for r in zone.records if r.type in _ADDRESS_TYPES}
    for record in zone.records:
        target = _target(record.rdata)
        if target and target.is_subdomain(zone.origin) and target not in addressed:
            yield (
                f"{record.type} '{_owner_text(zone, record)}' points at "
                f"'{target}', which has no A or AAAA record in the zone"
            )


def _target(rdata: dns.rdata.Rdata) -> dns.name.Name | None:
    """The host an MX, NS or SRV record points at; SRV's "." means no service (RFC 2782)."""
    target: dns.name.Name | None = None
    if isinstance(rdata, dns.rdtypes.ANY.MX.MX):
        target = rdata.exchange
    elif isinstance(rdata, dns.rdtypes.ANY.NS.NS | dns.rdtypes.IN.SRV.SRV):
        target = rdata.target
    return None if target == dns.name.root else target


def _owner_text(zone: _ZoneData, record: _Record) -> str:
    return record.owner.relativize(zone.origin).to_text()


# --- content hash, serial, text -----------------------------------------------------------------


def _zone_file(
    zone: _ZoneData, previous: Mapping[str, tuple[str, int]], today: datetime.date
) -> ZoneFile:
    content_hash = _content_hash(zone)
    serial = _serial(previous.get(zone.name), content_hash, today)
    return ZoneFile(zone.name, _render(zone, serial), content_hash, serial)


def _content_hash(zone: _ZoneData) -> str:
    """sha256 of every record with its effective TTL, the SOA's serial left out."""
    soa = zone.soa
    lines = [
        f"{zone.origin} {zone.ttl} IN SOA {soa.mname} {soa.rname} "
        f"{soa.refresh} {soa.retry} {soa.expire} {soa.minimum}",
        *(
            f"{r.owner} {zone.ttl if r.ttl is None else r.ttl} IN {r.type} {r.value}"
            for r in zone.records
        ),
    ]
    return hashlib.sha256("".join(f"{line}\n" for line in lines).encode()).hexdigest()


def _serial(previous: tuple[str, int] | None, content_hash: str, today: datetime.date) -> int:
    """YYYYMMDDnn (RFC 1912 §2.2): kept while the records are unchanged, else increased."""
    first_of_today = int(today.strftime("%Y%m%d")) * 100
    if previous is None:
        return first_of_today
    previous_hash, previous_serial = previous
    if previous_hash == content_hash:
        return previous_serial
    return max(first_of_today, previous_serial + 1)


@functools.cache
def _environment() -> jinja2.Environment:
    # Zone files are not HTML: HTML-escaping would corrupt TXT strings such as '"v=spf1 ... -all"'.
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mailwright.compiler", "templates"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _render(zone: _ZoneData, serial: int) -> str:
    rows = [
        (_owner_text(zone, r), "" if r.ttl is None else str(r.ttl), r.type, r.value)
        for r in zone.records
    ]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    return (
        _environment()
        .get_template("zone.j2")
        .render(
            name=zone.name,
            origin=zone.origin.to_text(),
            ttl=zone.ttl,
            soa=zone.soa,
            serial=serial,
            rows=rows,
            widths=widths,
        )
    )


def zone_diagnostics(loaded: LoadedSpec) -> list[Diagnostic]:
    """What no name server would load, located at the zone in the spec, for `validate`."""
    found = []
    for i, zone in enumerate(loaded.spec.dns):
        try:
            _forward_zone(loaded.spec, zone)
        except ZoneError as exc:
            position = loaded.locate(("dns", i, "domain"))
            found += [
                Diagnostic(position, Severity.ERROR, "zone-conflict", f"zone {zone.domain}: {p}")
                for p in exc.problems
            ]
    return found
