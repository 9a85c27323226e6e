"""The network-namespace lab for the tests of tests/lab: Linux, root, iproute2, BIND, unbound.

One lab per test package run (`shared_lab`, about 3 s to build): namespaces `athena`
(10.1.0.10) and `arlington` (10.2.0.10) besides `internet`, with the root zone delegating
`dcnw.example` to athena and `minasi.example` to arlington, where each runs a small named of
its own for the zone. Tests take `lab`, which checks isolation before handing the lab out, so
no test sends a packet through a lab that could leak. Everything is removed by the fixture's
finalizer (by pid and by name prefix), also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mailwright.runtime.lab import Lab, LabHost, LabUnavailableError, check_available
from tests.helpers import MAILWRIGHT, require_tool

ATHENA = LabHost("athena", "10.1.0.10")
ARLINGTON = LabHost("arlington", "10.2.0.10")
HOSTS = [ATHENA, ARLINGTON]
# RFC 2606 reserves the .example TLD: no lab name can be a real domain.
DCNW = "dcnw.example"
MINASI = "minasi.example"
DELEGATIONS = {
    DCNW: [(f"ns1.{DCNW}", ATHENA.ipv4)],
    MINASI: [(f"ns.{MINASI}", ARLINGTON.ipv4)],
}
# The tools the lab drives; CI installs them (iproute2 bind9 bind9-utils bind9-dnsutils
# unbound postfix swaks) and runs as root with MAILWRIGHT_REQUIRE_TOOLS=1.
TOOLS = {
    "ip": "iproute2",
    "named": "bind9",
    "named-checkconf": "bind9-utils",
    "unbound": "unbound",
    "unbound-checkconf": "unbound",
    "postfix": "postfix",
    "sendmail": "postfix",
    "dig": "bind9-dnsutils",
    "swaks": "swaks",
}


def require_lab() -> None:
    """Skip without the tools or without root; fail instead when MAILWRIGHT_REQUIRE_TOOLS=1."""
    for tool, package in TOOLS.items():
        require_tool(tool, package)
    try:
        check_available()
    except LabUnavailableError as error:
        if os.environ.get("MAILWRIGHT_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{error} and MAILWRIGHT_REQUIRE_TOOLS=1")
        pytest.skip(str(error))


def zone(origin: str, server: str, host: LabHost) -> str:
    """A domain's zone as its own name server serves it: NS, MX and the mail host's A."""
    return "\n".join(
        [
            "$TTL 30",
            f"{origin}. IN SOA {server}. hostmaster.{origin}. 1 3600 600 86400 30",
            f"{origin}. IN NS {server}.",
            f"{server}. IN A {host.ipv4}",
            f"{origin}. IN MX 10 {host.name}.{origin}.",
            f"{host.name}.{origin}. IN A {host.ipv4}",
            "",
        ]
    )


def build_lab(directory: Path) -> Lab:
    lab = Lab(directory)
    try:
        lab.up(HOSTS, DELEGATIONS)
        lab.assert_isolated()
        for host, origin in ((ATHENA, DCNW), (ARLINGTON, MINASI)):
            [(server, _)] = DELEGATIONS[origin]
            lab.start_named(host.name, host.ipv4, {origin: zone(origin, server, host)})
    except BaseException:
        lab.down()
        raise
    return lab


@pytest.fixture(scope="package")
def shared_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab()
    lab = build_lab(tmp_path_factory.mktemp("lab") / "runtime")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def lab(shared_lab: Lab) -> Lab:
    """The shared lab, checked to be isolated before the test sends anything through it."""
    shared_lab.assert_isolated()
    return shared_lab


NETNS = ("--auto-approve", "--runtime", "netns")


@contextlib.contextmanager
def applied_in_the_lab(specs: Sequence[Path], state: Path) -> Iterator[Lab]:
    """`mailwright apply SPECS --runtime netns` (the runtime on, whatever the caller's
    environment says); the lab, checked to be isolated; `mailwright down` at the end."""
    done = subprocess.run(
        [MAILWRIGHT, "apply", *map(str, specs), *NETNS, "--state", str(state)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "MAILWRIGHT_RUNTIME"},
        timeout=180,
        check=False,
    )
    try:
        assert done.returncode == 0, done.stderr
        lab = Lab(state / "runtime")
        lab.assert_isolated()
        yield lab
    finally:
        subprocess.run([MAILWRIGHT, "down", "--state", str(state)], timeout=120, check=False)
