"""Per-host runtime configs: everything one host's runtime needs, and nothing it does not,
written through the runtime's host contract (runtime/contract.py)."""

from __future__ import annotations

from dataclasses import dataclass

from mailwright.compiler.gal import GalEntry, pop3_row
from mailwright.compiler.inheritance import server_pop3
from mailwright.runtime import contract
from mailwright.schema import LoadedSpec
from mailwright.schema.models import ImsConnector, Role, Server, Site


def _peer(site: Site, server: Server) -> contract.Peer:
    roles = tuple(sorted(r.value for r in server.roles))
    return contract.Peer(
        fqdn=server.fqdn,
        ipv4=str(server.ipv4),
        site=site.name,
        location=server.location or "",
        roles=roles,
        services=contract.services(roles),
    )


def _ims(server: Server) -> contract.ImsSettings | None:
    if Role.IMS not in server.roles:
        return None
    ims = server.ims or ImsConnector()
    return contract.ImsSettings.from_json(ims.model_dump(mode="json", exclude={"address_spaces"}))


def peers(loaded: LoadedSpec) -> dict[str, contract.Peer]:
    """Every server of the organization as the others see it (the shared servers.json)."""
    return {s.name: _peer(site, s) for site in loaded.spec.sites for s in site.servers}


@dataclass
class HostContext:
    """What every host config of one organization draws on, worked out once."""

    loaded: LoadedSpec
    homed: dict[str, list[GalEntry]]  # home server -> its recipients
    shared: list[str]  # the organization-wide artifacts the hosts read too


def host_config(context: HostContext, site: Site, server: Server) -> contract.HostConfig:
    homed = context.homed.get(server.name, []) if Role.STORE in server.roles else []
    peer = _peer(site, server)
    return contract.HostConfig(
        organization=context.loaded.name,
        domains=tuple(context.loaded.spec.organization.domains),
        server=contract.HostServer(**peer.as_json(), name=server.name),
        pop3=pop3_row(server_pop3(site, server)),
        mailboxes=tuple(contract.Mailbox(e.row, e.mailbox.password) for e in homed),
        ims=_ims(server),
        tls=_tls(context.loaded, server),
        resolvers=tuple(str(r) for r in server.resolvers),
        shared=tuple(context.shared),
    )


def _tls(loaded: LoadedSpec, server: Server) -> contract.TlsFiles | None:
    """Absolute paths: the runtime never sees the spec's folder."""
    if server.tls is None:
        return None
    base = loaded.path.parent.resolve()
    return contract.TlsFiles(
        certificate=str(base / server.tls.certificate),
        private_key=str(base / server.tls.private_key),
    )
