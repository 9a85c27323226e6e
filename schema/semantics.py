"""Rules that relate several parts of a spec. Every problem is collected; none stops the rest."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from mailwright.runtime.routing import Scope
from mailwright.schema.addressing import ProxyAddress, is_domain
from mailwright.schema.diagnostics import Problem, Severity, SpecPath
from mailwright.schema.models import (
    Mailbox,
    OrganizationSpec,
    Role,
    Server,
    Site,
    Zone,
)
from mailwright.schema.recipients import AddressingError, SiteAddresser

# RFC 5321 §4.5.4.1: retries at least 30 minutes apart; give up after at least 4-5 days.
MIN_RETRY_INTERVAL = 30 * 60
MIN_GIVE_UP = 4 * 86400
ZONE_RECORD_TYPES_DERIVED = {"SOA"}


@dataclass(frozen=True)
class Related(Problem):
    """A problem about a clash, naming the other place involved."""

    related: SpecPath = ()


@dataclass
class Checker:
    spec: OrganizationSpec
    mailboxes: Sequence[tuple[SpecPath, Mailbox]]
    base_dir: Path
    # Addresses already known (mailbox index -> addresses): of mailboxes from a cached import,
    # whose own checks passed when the same spec and CSV bytes were loaded before.
    known: Mapping[int, tuple[ProxyAddress, ...]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    proxies: list[tuple[ProxyAddress, ...]] = field(default_factory=list)
    # previous_aliases entries already found wrong: their addresses are not checked again
    bad_previous: set[SpecPath] = field(default_factory=set)

    def error(self, path: SpecPath, code: str, message: str, at_key: bool = False) -> None:
        self.problems.append(Problem(path, code, message, Severity.ERROR, at_key))

    def warn(self, path: SpecPath, code: str, message: str) -> None:
        self.problems.append(Problem(path, code, message, Severity.WARNING))

    def servers(self) -> Iterator[tuple[SpecPath, Site, Server]]:
        for i, site in enumerate(self.spec.sites):
            for j, server in enumerate(site.servers):
                yield ("sites", i, "servers", j), site, server

    def unique(self, kind: str, items: Sequence[tuple[SpecPath, str]]) -> None:
        """Names compare case-insensitively, as Exchange directory names do."""
        first: dict[str, SpecPath] = {}
        for path, name in items:
            if (seen := first.setdefault(name.casefold(), path)) is not path:
                self.problems.append(
                    Related(
                        path, "duplicate-name", f"{kind} '{name}' is defined twice", related=seen
                    )
                )

    def run(self) -> None:
        for check in (
            _check_names,
            _check_servers,
            _check_mailboxes,
            _check_inbound,
            _check_zones,
            _check_files,
        ):
            check(self)


def check_organization(
    spec: OrganizationSpec,
    mailboxes: Sequence[tuple[SpecPath, Mailbox]],
    base_dir: Path,
    known: Mapping[int, tuple[ProxyAddress, ...]] | None = None,
) -> tuple[list[Problem], list[tuple[ProxyAddress, ...]]]:
    """Every semantic problem of one organization, and each mailbox's proxy addresses."""
    checker = Checker(spec, mailboxes, base_dir, known or {})
    checker.run()
    return checker.problems, checker.proxies


def _check_names(self: Checker) -> None:
    spec = self.spec
    self.unique("site", [(("sites", i, "name"), s.name) for i, s in enumerate(spec.sites)])
    self.unique("server", [((*p, "name"), s.name) for p, _, s in self.servers()])
    self.unique("mailbox alias", [((*p, "alias"), m.alias) for p, m in self.mailboxes])
    _check_previous_aliases(self)
    self.unique(
        "domain",
        [(("organization", "domains", i), d) for i, d in enumerate(spec.organization.domains)],
    )
    self.unique("zone", [(("dns", i, "domain"), z.domain) for i, z in enumerate(spec.dns)])
    for i, site in enumerate(spec.sites):
        self.unique(
            "location", [(("sites", i, "locations", j), x) for j, x in enumerate(site.locations)]
        )


def _check_previous_aliases(self: Checker) -> None:
    """A previous alias names one mailbox's past: no mailbox has it now, and only one had it."""
    current = {m.alias.casefold(): m.alias for _, m in self.mailboxes}
    claimed: dict[str, tuple[SpecPath, str]] = {}
    for path, mailbox in self.mailboxes:
        for k, previous in enumerate(mailbox.previous_aliases):
            where = (*path, "previous_aliases", k)
            if (owner := current.get(previous.casefold())) is not None:
                self.bad_previous.add(where)
                self.error(
                    where,
                    "previous-alias-in-use",
                    f"previous alias '{previous}' of mailbox '{mailbox.alias}' is the alias of "
                    f"mailbox '{owner}' now",
                )
                continue
            first, owner = claimed.setdefault(previous.casefold(), (where, mailbox.alias))
            if first is not where:
                self.bad_previous.add(where)
                self.problems.append(
                    Related(
                        where,
                        "duplicate-name",
                        f"previous alias '{previous}' is claimed by mailboxes '{owner}' "
                        f"and '{mailbox.alias}'",
                        related=first,
                    )
                )


def _check_servers(self: Checker) -> None:
    self.unique("IPv4 address", [((*p, "ipv4"), str(s.ipv4)) for p, _, s in self.servers()])
    self.unique("fqdn", [((*p, "fqdn"), s.fqdn) for p, _, s in self.servers()])
    owned = self.spec.organization.domains
    for path, site, server in self.servers():
        if not server.external_fqdn and not _inside(server.fqdn, owned):
            self.error(
                (*path, "fqdn"),
                "fqdn-outside-organization",
                f"fqdn '{server.fqdn}' is not inside an owned domain ({', '.join(owned)}); "
                "set external_fqdn: true if that is intended",
            )
        if server.location is not None and server.location not in site.locations:
            self.error(
                (*path, "location"),
                "unknown-location",
                f"location '{server.location}' is not one of site '{site.name}' locations"
                + (f" ({', '.join(site.locations)})" if site.locations else ""),
            )
        if server.ims is not None and Role.IMS not in server.roles:
            self.error(
                (*path, "ims"),
                "ims-without-role",
                "ims settings on a server without the ims role",
                at_key=True,
            )
        if server.ims is not None:
            _check_connector(self, path, server)


def _check_connector(self: Checker, path: SpecPath, server: Server) -> None:
    assert server.ims is not None
    ims_path = (*path, "ims")
    for k, space in enumerate(server.ims.address_spaces):
        if space.scope is Scope.LOCATION and server.location is None:
            self.error(
                (*ims_path, "address_spaces", k, "scope"),
                "scope-without-location",
                f"server '{server.name}' has no location, "
                "so a location-scoped address space reaches no one",
            )
    for k, domain in enumerate(server.ims.domains or ()):
        if domain not in self.spec.organization.domains:
            self.error(
                (*ims_path, "domains", k),
                "unknown-domain",
                f"'{domain}' is not a domain the organization owns",
            )
    retry = server.ims.retry
    for k, interval in enumerate(retry.intervals):
        if interval < MIN_RETRY_INTERVAL:
            self.warn(
                (*ims_path, "retry", "intervals", k),
                "retry-too-soon",
                f"retry interval of {interval}s is under the 30 minutes RFC 5321 §4.5.4.1 asks for",
            )
    if retry.give_up < MIN_GIVE_UP:
        self.warn(
            (*ims_path, "retry", "give_up"),
            "give-up-too-soon",
            f"giving up after {retry.give_up}s is sooner than "
            "the 4-5 days RFC 5321 §4.5.4.1 asks for",
        )


def _inside(name: str, domains: Sequence[str]) -> bool:
    return any(name == d or name.endswith("." + d) for d in domains)


def _check_mailboxes(self: Checker) -> None:
    organization = self.spec.organization
    addressers = {id(site): SiteAddresser(site, organization) for site in self.spec.sites}
    homes: dict[str, tuple[Server, SiteAddresser]] = {}
    for _, site, server in self.servers():
        homes.setdefault(server.name.casefold(), (server, addressers[id(site)]))
    owners: dict[tuple[object, str], tuple[SpecPath, str]] = {}
    for i, (path, mailbox) in enumerate(self.mailboxes):
        proxies = self.known.get(i)
        if proxies is None:
            proxies = _addresses(self, path, mailbox, homes.get(mailbox.home_server.casefold()))
        self.proxies.append(proxies)
        home = homes.get(mailbox.home_server.casefold())
        past = _previous_claims(path, mailbox, home[1]) if home and mailbox.previous_aliases else {}
        _check_proxies(self, path, mailbox, proxies, owners, past=past)


def _previous_claims(
    path: SpecPath, mailbox: Mailbox, addresser: SiteAddresser
) -> dict[tuple[object, str], SpecPath]:
    """The addresses only a previous alias gives the mailbox -> where that alias is written."""
    claims: dict[tuple[object, str], SpecPath] = {}
    for k, previous in enumerate(mailbox.previous_aliases):
        with contextlib.suppress(AddressingError):
            for proxy in addresser.addresses(mailbox.model_copy(update={"alias": previous})):
                claims.setdefault(proxy.key, (*path, "previous_aliases", k))
    for proxy in addresser.addresses(mailbox.model_copy(update={"previous_aliases": ()})):
        claims.pop(proxy.key, None)
    return claims


def _addresses(
    self: Checker, path: SpecPath, mailbox: Mailbox, home: tuple[Server, SiteAddresser] | None
) -> tuple[ProxyAddress, ...]:
    """The mailbox's addresses, or () after saying why it has none."""
    if home is None:
        self.error(
            (*path, "home_server"),
            "unknown-server",
            f"home server '{mailbox.home_server}' is not a server of this organization",
        )
    elif Role.STORE not in home[0].roles:
        self.error(
            (*path, "home_server"),
            "not-a-store",
            f"home server '{mailbox.home_server}' does not have the store role",
        )
    else:
        try:
            return home[1].addresses(mailbox)
        except AddressingError as exc:
            self.error((*path, "alias"), "empty-address", str(exc))
    return ()


def _check_proxies(
    self: Checker,
    path: SpecPath,
    mailbox: Mailbox,
    proxies: tuple[ProxyAddress, ...],
    owners: dict[tuple[object, str], tuple[SpecPath, str]],
    *,
    past: Mapping[tuple[object, str], SpecPath],
) -> None:
    explicit = {p.key: k for k, p in enumerate(mailbox.proxy_addresses)}
    if explicit and sum(p.primary for p in mailbox.proxy_addresses) > len(
        {p.type for p in mailbox.proxy_addresses if p.primary}
    ):
        self.error(
            (*path, "proxy_addresses"),
            "two-primaries",
            "two primary (upper-case) addresses of one type",
        )
    claim = ((*path, "alias"), mailbox.alias)
    for kind, address, _ in proxies:
        key = (kind, address.casefold())
        k = explicit.get(key) if explicit else None
        mine = claim if k is None else ((*path, "proxy_addresses", k), mailbox.alias)
        if (where := past.get(key)) is not None:
            if where in self.bad_previous:
                continue  # said already: that previous alias is wrong
            mine = (where, mailbox.alias)
        if (other := owners.setdefault(key, mine)) is not mine:
            self.problems.append(
                Related(
                    mine[0],
                    "duplicate-address",
                    f"address {kind}:{address} of mailbox '{mailbox.alias}' "
                    f"is already an address of mailbox '{other[1]}'",
                    related=other[0],
                )
            )


def _check_inbound(self: Checker) -> None:
    covered: set[str] = set()
    for _, _, server in self.servers():
        if Role.IMS in server.roles:
            ims = server.ims
            if ims is None or ims.transfer_mode.inbound:
                covered.update(
                    ims.domains
                    if ims and ims.domains is not None
                    else self.spec.organization.domains
                )
    for i, domain in enumerate(self.spec.organization.domains):
        if domain not in covered:
            self.warn(
                ("organization", "domains", i),
                "no-inbound-ims",
                f"no IMS receives mail for '{domain}': it cannot receive internet mail",
            )


def _check_zones(self: Checker) -> None:
    dns_servers: dict[str, Server] = {}
    for _, _, each in self.servers():
        dns_servers.setdefault(each.name.casefold(), each)
    for i, zone in enumerate(self.spec.dns):
        path: SpecPath = ("dns", i)
        if zone.domain not in self.spec.organization.domains:
            self.error(
                (*path, "domain"),
                "unknown-domain",
                f"zone '{zone.domain}' is not a domain the organization owns",
            )
        for k, ns in enumerate(zone.nameservers):
            server = dns_servers.get(ns.casefold())
            if server is None and ns.endswith(".") and is_domain(ns):
                continue
            if server is None:
                self.error(
                    (*path, "nameservers", k),
                    "unknown-server",
                    f"nameserver '{ns}' is neither a server of this organization "
                    "nor an external host name ending in '.'",
                )
            elif Role.DNS not in server.roles:
                self.error(
                    (*path, "nameservers", k),
                    "not-a-dns-server",
                    f"nameserver '{ns}' does not have the dns role",
                )
        _check_records(self, path, zone)


def _check_records(self: Checker, path: SpecPath, zone: Zone) -> None:
    origin = dns.name.from_text(zone.domain)
    for k, record in enumerate(zone.records):
        where = (*path, "records", k)
        try:
            rdtype = dns.rdatatype.from_text(record.type)
            if dns.rdatatype.to_text(rdtype) in ZONE_RECORD_TYPES_DERIVED:
                self.error(
                    (*where, "type"),
                    "derived-record",
                    "the SOA record is derived from the zone settings",
                )
                continue
            name = dns.name.from_text(record.name, origin)
            if not name.is_subdomain(origin):
                self.error(
                    (*where, "name"),
                    "record-outside-zone",
                    f"'{record.name}' is outside zone '{zone.domain}'",
                )
            dns.rdata.from_text(dns.rdataclass.IN, rdtype, record.value, origin)
        except dns.rdatatype.UnknownRdatatype:
            self.error(
                (*where, "type"), "unknown-record-type", f"'{record.type}' is not a DNS record type"
            )
        except (dns.exception.DNSException, ValueError) as exc:
            self.error(
                (*where, "value"), "bad-record", f"{record.type} record '{record.value}': {exc}"
            )


def _check_files(self: Checker) -> None:
    for path, _, server in self.servers():
        if server.tls is not None:
            for key in ("certificate", "private_key"):
                name = getattr(server.tls, key)
                if not (self.base_dir / name).is_file():
                    self.error((*path, "tls", key), "missing-file", f"no such file: {name}")
