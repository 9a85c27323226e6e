"""Where the supervisor's hosts run: on this machine's loopback, or each in a network namespace
of the lab at its spec address.

The supervisor (runtime/supervisor/daemon.py) asks its placement for each host's address and
ports, the address map its bundle carries (if any), the zones its DNS hosts answer for, and the
command prefix that puts a host where it belongs. The netns placement imports the lab only
when it is chosen; a host process never imports either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from mailwright.runtime.contract import (
    UNPRIVILEGED_PORTS,
    WELL_KNOWN_PORTS,
    AddressMap,
    Peer,
    Service,
)
from mailwright.runtime.discovery import local_addresses

RUNTIMES = ("local", "netns")


class Placement(Protocol):
    name: str

    def ports(self) -> Mapping[Service, int]: ...

    def address(self, host: str, loopback: str, peer: Peer) -> str:
        """Where host "ORG/server" listens: its loopback address here, or its spec ipv4."""

    def addresses(
        self, peers: Mapping[str, Peer], host_addresses: Mapping[str, str]
    ) -> AddressMap | None: ...

    def zones(self, tree: Path) -> list[Path]:
        """The zones every DNS host answers for besides its organization's own."""

    def rebuilds(self, peers: Mapping[str, Peer]) -> bool:
        """Whether making ready for these hosts takes every running host away first."""

    def prepare(self, tree: Path, peers: Mapping[str, Peer]) -> None:
        """Make ready for the hosts `peers` ("ORG/server" -> its servers.json entry) of the
        applied tree."""

    def prefix(self, server: str) -> list[str]:
        """What runs a host's command where it belongs."""

    def close(self) -> None: ...


class Loopback:
    """Every host on a loopback address of its own (state.json's host_addresses); as root on
    the spec's ports, otherwise on the contract's unprivileged ones. Hosts of several
    organizations reach each other through the address map, and the runtime's DNS hosts
    answer for every zone applied: the local runtime has no root servers."""

    name = "local"

    def ports(self) -> Mapping[Service, int]:
        return WELL_KNOWN_PORTS if os.geteuid() == 0 else UNPRIVILEGED_PORTS

    def address(self, host: str, loopback: str, peer: Peer) -> str:
        return loopback

    def addresses(
        self, peers: Mapping[str, Peer], host_addresses: Mapping[str, str]
    ) -> AddressMap | None:
        return local_addresses(peers, host_addresses, self.ports())

    def zones(self, tree: Path) -> list[Path]:
        return sorted(tree.glob("*/zones/*.zone"))

    def rebuilds(self, peers: Mapping[str, Peer]) -> bool:
        return False

    def prepare(self, tree: Path, peers: Mapping[str, Peer]) -> None:
        pass

    def prefix(self, server: str) -> list[str]:
        return []

    def close(self) -> None:
        pass


def placement(runtime: str, state: Path) -> Placement:
    if runtime == "netns":
        from mailwright.runtime.targets.netns import Namespaces  # noqa: PLC0415 - root only

        return Namespaces(state)
    return Loopback()
