"""The netns placement: every host in a network namespace of its own, at its spec ipv4 and on
the spec's ports, joined to the others and to an `internet` namespace by the lab's bridge
(runtime/lab). Peers find each other as a real deployment does: at the addresses of
`servers.json`, and the IMS finds MX hosts by recursive DNS, through the lab's resolver and
root server, which delegates each applied organization's domains to its DNS hosts with glue
from the compiled zones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import dns.name
import dns.rdatatype

from mailwright.runtime.contract import WELL_KNOWN_PORTS, AddressMap, Peer, Service
from mailwright.runtime.lab import Lab, LabError, LabHost
from mailwright.runtime.nameserver import load_zones

ARPA = dns.name.from_text("arpa.")


class Namespaces:
    name = "netns"

    def __init__(self, state: Path) -> None:
        self.lab = Lab(state / "runtime")
        self.hosts: list[LabHost] = []  # what the lab was built for

    def ports(self) -> Mapping[Service, int]:
        return WELL_KNOWN_PORTS

    def address(self, host: str, loopback: str, peer: Peer) -> str:
        return peer.ipv4

    def addresses(
        self, peers: Mapping[str, Peer], host_addresses: Mapping[str, str]
    ) -> AddressMap | None:
        return None  # the spec's addresses are real here

    def zones(self, tree: Path) -> list[Path]:
        return []  # each DNS host serves its own organization's; the lab's root delegates

    def rebuilds(self, peers: Mapping[str, Peer]) -> bool:
        return _lab_hosts(peers) != self.hosts

    def prepare(self, tree: Path, peers: Mapping[str, Peer]) -> None:
        """The lab of these hosts: made anew when they changed (its namespaces are fixed when
        it is made), after what a crashed one left is cleaned; isolation checked first."""
        wanted = _lab_hosts(peers)
        if wanted == self.hosts:
            return
        self.lab.down()
        self.lab.up(wanted, delegations(tree, peers))
        self.lab.assert_isolated()
        self.hosts = wanted

    def prefix(self, server: str) -> list[str]:
        return self.lab.exec_prefix(server)

    def close(self) -> None:
        self.lab.down()


def _lab_hosts(peers: Mapping[str, Peer]) -> list[LabHost]:
    servers = [name.split("/", 1)[1] for name in sorted(peers)]
    if len(set(servers)) != len(servers):
        raise LabError("the lab names a namespace by server: two organizations share a name")
    return [LabHost(name.split("/", 1)[1], peer.ipv4) for name, peer in sorted(peers.items())]


def delegations(tree: Path, hosts: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """Each forward zone of the applied organizations -> its name servers and their glue (A
    records inside the zone), as a parent zone delegates (RFC 1034 §4.2.1)."""
    organizations = sorted({name.split("/", 1)[0] for name in hosts})
    zones = load_zones(
        sorted(z for o in organizations for z in (tree / o / "zones").glob("*.zone"))
    )
    delegated: dict[str, list[tuple[str, str]]] = {}
    for zone in zones:
        if zone.origin is None or zone.origin.is_subdomain(ARPA):
            continue  # reverse zones would need the in-addr.arpa chain; the lab has none
        servers = zone.get_rdataset(zone.origin, dns.rdatatype.NS)
        glue = []
        for record in servers or ():
            target = record.target.derelativize(zone.origin)
            addresses = (
                zone.get_rdataset(target, dns.rdatatype.A)
                if target.is_subdomain(zone.origin)
                else None
            )
            glue += [(target.to_text(omit_final_dot=True), a.address) for a in addresses or ()]
        delegated[zone.origin.to_text(omit_final_dot=True)] = glue
    return delegated
