"""How a host finds its peers and the DNS: from its bundle, never from what another host wrote.

A server of the organization listens at its `servers.json` ipv4 and ports, as the spec puts
it; the IMS asks the resolvers the spec names for its server, or the machine's own. The local
runtime, whose hosts share one machine's loopback, hands each host an explicit address map
(contract.AddressMap) instead: the spec ipv4 of every applied server -> the loopback address
and ports it really listens on, and its own DNS servers. There, an address outside the map is
outside the runtime: nothing leaves loopback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailwright.runtime.contract import AddressMap, LocalAddress, Peer, Service, read_servers

DNS_PORT = 53  # RFC 1035 §4.2


@dataclass(frozen=True)
class Endpoint:
    """Where to connect, and the name the peer's certificate carries."""

    host: str
    port: int
    name: str


class OutsideRuntimeError(Exception):
    """An address the local runtime cannot reach: it has no internet."""

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} is outside the local runtime, which has no internet")


@dataclass(frozen=True)
class Peers:
    servers: Mapping[str, Peer]  # the organization's servers.json, by name
    addresses: AddressMap | None  # the local runtime's map; None: the spec's addresses
    spec_resolvers: tuple[str, ...] = ()  # the server's own, from its host config

    def transfer(self, server: str) -> Endpoint | None:
        """A server's MTA transfer port; None if it is no server of the organization."""
        peer = self.servers.get(server)
        if peer is None or not peer.serves("transfer"):
            return None
        host, port = self._at(peer.ipv4, "transfer", peer.services["transfer"])
        return Endpoint(host, port, peer.fqdn)

    def smtp(self, address: str) -> tuple[str, int]:
        """Where an MX's address (from DNS) takes SMTP; OutsideRuntimeError in the local
        runtime for an address that is none of its servers."""
        return self._at(address, "smtp", 25)

    def resolvers(self) -> list[tuple[str, int]] | None:
        """The DNS servers to ask: the local runtime's, the spec's, or None for the system's."""
        if self.addresses is not None:
            return [_host_port(r) for r in self.addresses.resolvers]
        return [(r, DNS_PORT) for r in self.spec_resolvers] or None

    def _at(self, address: str, service: Service, port: int) -> tuple[str, int]:
        if self.addresses is None:
            return address, port
        local = self.addresses.hosts.get(address)
        if local is None or service not in local.ports:
            raise OutsideRuntimeError(address)
        return local.address, local.ports[service]


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def local_addresses(
    peers: Mapping[str, Peer], host_addresses: Mapping[str, str], ports: Mapping[Service, int]
) -> AddressMap:
    """The local runtime's map of the applied hosts (`peers`, by "ORG/server", as spec_peers
    reads them): each host on its loopback
    address, its services on `ports`; the DNS hosts are the resolvers. Two organizations that
    give a server the same ipv4 cannot both be reached by it here: the first keeps it."""
    hosts: dict[str, LocalAddress] = {}
    resolvers = []
    for name, address in sorted(host_addresses.items()):
        peer = peers[name]
        listens: dict[str, int] = {s: p for s, p in ports.items() if peer.serves(s)}
        local = LocalAddress(address, listens)
        hosts.setdefault(peer.ipv4, local)
        if peer.serves("dns"):
            resolvers.append(f"{address}:{ports['dns']}")
    return AddressMap(hosts, tuple(resolvers))


def spec_peers(tree: Path, hosts: Sequence[str]) -> dict[str, Peer]:
    """Each host "ORG/server" of an applied tree as its organization's servers.json has it."""
    servers: dict[str, dict[str, Peer]] = {}
    peers = {}
    for name in hosts:
        organization, server = name.split("/", 1)
        if organization not in servers:
            servers[organization] = read_servers(tree / organization / "servers.json")
        peers[name] = servers[organization][server]
    return peers
