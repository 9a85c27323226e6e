"""Per-host runtime configs: everything one host's runtime needs, and nothing it does not."""

from __future__ import annotations

from typing import Any

from mailwright.compiler.gal import GalEntry
from mailwright.compiler.gwart import Gwart
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


def host_config(
    *,
    loaded: LoadedSpec,
    site: Site,
    server: Server,
    homed: list[GalEntry],
    gwart: Gwart,
    shared: dict[str, str],
) -> dict[str, Any]:
    """`homed`: the recipients whose home is this server. `shared` names the
    organization-wide artifacts the host reads too (path -> sha256)."""
    resolvers = sorted(
        str(s.ipv4) for each in loaded.spec.sites for s in each.servers if Role.DNS in s.roles
    )
    return {
        "format_version": HOST_FORMAT_VERSION,
        "organization": loaded.name,
        "domains": list(loaded.spec.organization.domains),
        "server": {"name": server.name, **_peer(site, server)},
        "pop3": server_pop3(site, server).model_dump(mode="json"),
        "mailboxes": [
            {**entry.record, "password_hash": entry.mailbox.password}
            for entry in (homed if Role.STORE in server.roles else [])
        ],
        "gwart": [r.as_json() for r in gwart.visible_from(site.name, server.location or "").routes],
        "ims": _ims(server),
        "tls": _tls(loaded, server),
        "dns": {"resolvers": resolvers},
        "shared": shared,
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
