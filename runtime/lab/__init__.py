"""The network-namespace lab: every mail host in its own namespace, and a small Internet.

`Lab(dir).up(hosts, delegations)` makes one namespace per host (its spec ipv4 on a veth), an
`internet` namespace with a root name server, a recursive resolver and a Postfix for
example.net, all on one bridge that has no uplink; `Lab(dir).down()` removes all of it, also
what a crashed lab left. Linux and root only. The mail runtime never imports this package.

    lab = Lab(state / "runtime").up(
        [LabHost("athena", "10.1.0.10"), LabHost("arlington", "10.2.0.10")],
        {"minasi.com": [("ns.minasi.com", "10.2.0.10")]},
    )
    lab.assert_isolated()                       # before any traffic
    lab.run("athena", ["dig", "MX", "minasi.com"])  # = ip netns exec <prefix>-athena dig ...
    server = lab.popen("athena", [...])         # recorded by pid; lab.stop(server.pid)
    Lab(state / "runtime").down()               # any process, even after a crash
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from mailwright.runtime.lab.netns import (
    LabCommandError,
    LabError,
    LabHost,
    LabIsolationError,
    LabNetwork,
    LabServiceError,
    LabUnavailableError,
    check_available,
    lab_prefix,
)
from mailwright.runtime.lab.world import (
    INTERNET,
    TEST_NETS,
    WORLD_DOMAIN,
    Delegations,
    WorldAddresses,
    check_delegations,
    choose_world,
    postfix_base,
    root_networks,
    root_zone,
    start_named,
    start_postfix,
    start_unbound,
    wait_for_tcp,
)

__all__ = [
    "INTERNET",
    "TEST_NETS",
    "WORLD_DOMAIN",
    "Delegations",
    "Lab",
    "LabCommandError",
    "LabError",
    "LabHost",
    "LabIsolationError",
    "LabServiceError",
    "LabUnavailableError",
    "WorldAddresses",
    "check_available",
    "lab_prefix",
]


class Lab:
    """One lab, kept in `directory` (its registry is `directory/lab.json`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.network = LabNetwork(self.directory)

    def up(self, hosts: Sequence[LabHost], delegations: Delegations) -> Lab:
        """Namespaces for `hosts` and `internet`, the bridge, named, unbound and Postfix.

        What an earlier lab in the same directory left is removed first; if anything here
        fails, everything made so far is removed before the error goes on.
        """
        names = [host.name for host in hosts]
        if INTERNET in names or len(set(names)) != len(names):
            raise LabError(f"lab host names must be unique and not {INTERNET!r}: {names}")
        check_delegations(delegations)
        check_available()
        world = choose_world(root_networks())
        members: dict[str, list[str]] = {INTERNET: world.all}
        members.update({host.name: [host.ipv4] for host in hosts})
        try:
            self.network.build(members)
            for name in members:
                self.network.write_resolv_conf(name, [world.resolver])
            root = {".": root_zone(delegations, world)}
            self.start_named(INTERNET, world.root_server, root, "root")
            start_unbound(self.network, self.directory / "unbound", world)
            start_postfix(self.network, world)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove every namespace, link, file and process this lab made; safe to repeat."""
        self.network.down()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *_: object) -> None:
        self.down()

    # naming and running

    def namespace(self, name: str) -> str:
        return self.network.namespace(name)

    def names(self) -> list[str]:
        return self.network.names()

    def exec_prefix(self, name: str) -> list[str]:
        return self.network.exec_prefix(name)

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return self.network.run(name, argv, check=check, timeout=timeout, input=input)

    def popen(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        stderr: IO[bytes] | int | None = subprocess.STDOUT,
    ) -> subprocess.Popen[bytes]:
        return self.network.popen(name, argv, stdout=stdout, stderr=stderr)

    def stop(self, pid: int) -> None:
        self.network.stop(pid)

    def set_link(self, name: str, up: bool) -> None:
        self.network.set_link(name, up)

    def wait_for_tcp(self, name: str, address: str, port: int, timeout: float = 15) -> None:
        wait_for_tcp(self.network, name, address, port, timeout=timeout)

    def assert_isolated(self) -> None:
        self.network.assert_isolated()

    # the world's services

    @property
    def world(self) -> WorldAddresses:
        """The internet namespace's addresses: root server, resolver, example.net's MX."""
        return WorldAddresses.from_addresses(self.network.addresses(INTERNET))

    def start_named(
        self, name: str, listen: str, zones: Mapping[str, str], label: str | None = None
    ) -> subprocess.Popen[bytes]:
        """An authoritative named in namespace `name` on `listen`:53 for `zones`."""
        folder = self.directory / "named" / (label or name)
        return start_named(self.network, name, folder, listen, zones)

    @property
    def postfix_config(self) -> Path:
        """The example.net Postfix's config folder: `sendmail -C` / `postfix -c` take it."""
        return postfix_base(self.network) / "etc"

    @property
    def world_mailbox(self) -> Path:
        """The Maildir that receives all mail for example.net."""
        return postfix_base(self.network) / "mail" / WORLD_DOMAIN

    @property
    def world_maillog(self) -> Path:
        return postfix_base(self.network) / "maillog"

    def sendmail(self, sender: str, recipients: Sequence[str], message: str) -> None:
        """Hand a message to the example.net Postfix, as a program on mx.example.net would."""
        argv = ["sendmail", "-C", str(self.postfix_config), "-f", sender, "--", *recipients]
        self.run(INTERNET, argv, input=message)
