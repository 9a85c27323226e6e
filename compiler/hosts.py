"""Per-host runtime configs: everything one host's runtime needs, and nothing it does not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailwright.compiler.gal import GalEntry
from mailwright.compiler.inheritance import server_pop3
from mailwright.schema import LoadedSpec
from mailwright.schema.models import ImsConnector, Role, Server, Site

HOST_FORMAT_VERSION = 1
# The well-known ports of the spec's services; the internal MTA transfer port is ours.
SMTP_PORT = 25
POP3_PORT = 110
DNS_PORT = 53
TRANSFER_PORT = 7025


def services(server: Server) -> dict[str, int]:
    """Every server runs an MTA (transfer); the roles add the rest."""
    ports = {"transfer": TRANSFER_PORT}
    if Role.STORE in server.roles:
        ports["pop3"] = POP3_PORT
    if Role.IMS in server.roles:
        ports["smtp"] = SMTP_PORT
    if Role.DNS in server.roles:
        ports["dns"] = DNS_PORT
    return ports


def _peer(site: Site, server: Server) -> dict[str, Any]:
    return {
        "fqdn": server.fqdn,
        "ipv4": str(server.ipv4),
        "site": site.name,
        "location": server.location or "",
        "roles": sorted(r.value for r in server.roles),
        "services": services(server),
    }


def _ims(server: Server) -> dict[str, Any] | None:
    if Role.IMS not in server.roles:
        return None
    ims = server.ims or ImsConnector()
    return ims.model_dump(mode="json", exclude={"address_spaces"})


def peers(loaded: LoadedSpec) -> dict[str, dict[str, Any]]:
    """Every server of the organization as the others see it (the shared servers.json)."""
    return {s.name: _peer(site, s) for site in loaded.spec.sites for s in site.servers}


@dataclass
class HostContext:
    """What every host config of one organization draws on, worked out once."""

    loaded: LoadedSpec
    homed: dict[str, list[GalEntry]]  # home server -> its recipients
    shared: list[str]  # the organization-wide artifacts the hosts read too
    resolvers: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.resolvers = sorted(
            str(s.ipv4)
            for site in self.loaded.spec.sites
            for s in site.servers
            if Role.DNS in s.roles
        )


def host_config(context: HostContext, site: Site, server: Server) -> dict[str, Any]:
    homed = context.homed.get(server.name, []) if Role.STORE in server.roles else []
    return {
        "format_version": HOST_FORMAT_VERSION,
        "organization": context.loaded.name,
        "domains": list(context.loaded.spec.organization.domains),
        "server": {"name": server.name, **_peer(site, server)},
        "pop3": server_pop3(site, server).model_dump(mode="json"),
        "mailboxes": [{**entry.record, "password_hash": entry.mailbox.password} for entry in homed],
        "ims": _ims(server),
        "tls": _tls(context.loaded, server),
        "dns": {"resolvers": context.resolvers},
        "shared": context.shared,
    }


def _tls(loaded: LoadedSpec, server: Server) -> dict[str, str] | None:
    """Absolute paths: the runtime never sees the spec's folder."""
    if server.tls is None:
        return None
    base = loaded.path.parent.resolve()
    return {
        "certificate": str(base / server.tls.certificate),
        "private_key": str(base / server.tls.private_key),
    }
