"""The lab is closed: no default route, no uplink, no root address, and the check says so."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from mailwright.runtime.lab import INTERNET, Lab, LabIsolationError
from tests.lab.conftest import ARLINGTON, ATHENA

WITNESS_PORT = 2525
# Accepts connections for ever; appends each peer's address to a file, greets it with a token.
WITNESS = """
import socket, sys
address, port, peers, token = sys.argv[1:]
server = socket.create_server((address, int(port)))
while True:
    connection, peer = server.accept()
    with open(peers, "a") as log:
        log.write(peer[0] + "\\n")
    connection.sendall(token.encode() + b"\\n")
    connection.close()
"""
READ_GREETING = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as client:
    print(client.makefile().readline(), end="")
"""


def test_lab_namespaces_reach_each_other(lab: Lab) -> None:
    # athena's named listens on 10.1.0.10:53 (TCP too): the positive control for the next test.
    for name in (INTERNET, ARLINGTON.name):
        lab.wait_for_tcp(name, ATHENA.ipv4, 53, timeout=5)


def test_the_root_namespace_cannot_reach_a_lab_address(lab: Lab, tmp_path: Path) -> None:
    # A connect from the root namespace may well "succeed": its default route leads to the real
    # network, where a gateway or proxy can accept anything. So the lab side is the witness:
    # a listener in athena records every peer and greets it with a token.
    token = f"athena-{uuid.uuid4()}"
    peers = tmp_path / "peers"
    argv = [sys.executable, "-c", WITNESS, ATHENA.ipv4, str(WITNESS_PORT), str(peers), token]
    witness = lab.popen(ATHENA.name, argv)
    try:
        lab.wait_for_tcp(INTERNET, ATHENA.ipv4, WITNESS_PORT, timeout=10)
        read = [sys.executable, "-c", READ_GREETING, ATHENA.ipv4, str(WITNESS_PORT)]
        assert lab.run(INTERNET, read).stdout == f"{token}\n"
        heard = peers.read_text()
        assert set(heard.split()) == {lab.world.root_server}  # the internet ns's first address
        try:
            with socket.create_connection((ATHENA.ipv4, WITNESS_PORT), timeout=1) as client:
                client.settimeout(1)
                received = client.recv(100)
        except OSError:
            received = b""
        assert token.encode() not in received
        assert peers.read_text() == heard
    finally:
        lab.stop(witness.pid)


def test_lab_namespaces_have_only_on_link_routes(lab: Lab) -> None:
    routes = lab.run(ATHENA.name, ["ip", "-4", "route", "show", "table", "all"]).stdout
    assert "default" not in routes
    assert f"{ARLINGTON.ipv4} dev eth0 scope link" in routes
    for address in lab.world.all:
        assert f"{address} dev eth0 scope link" in routes


def test_namespaces_resolve_through_the_lab_resolver(lab: Lab) -> None:
    for name in lab.names():
        resolv = lab.run(name, ["cat", "/etc/resolv.conf"]).stdout
        assert resolv == f"nameserver {lab.world.resolver}\n"


def test_a_default_route_in_a_namespace_breaks_isolation(lab: Lab) -> None:
    namespace = lab.namespace(ARLINGTON.name)
    subprocess.run(["ip", "-n", namespace, "route", "add", "default", "dev", "eth0"], check=True)
    try:
        with pytest.raises(LabIsolationError, match=f"namespace {namespace} has a default route"):
            lab.assert_isolated()
    finally:
        subprocess.run(["ip", "-n", namespace, "route", "del", "default"], check=True)
    lab.assert_isolated()


def test_a_foreign_port_on_the_bridge_breaks_isolation(lab: Lab) -> None:
    # Named with the lab's prefix, so the lab's `down` removes it even if this test dies.
    stranger = f"{lab.network.prefix}x0"
    subprocess.run(
        ["ip", "link", "add", stranger, "type", "veth", "peer", "name", f"{stranger}p"],
        check=True,
    )
    try:
        subprocess.run(["ip", "link", "set", stranger, "master", lab.network.bridge], check=True)
        with pytest.raises(LabIsolationError, match=f"has port {stranger}, which is not a lab"):
            lab.assert_isolated()
    finally:
        subprocess.run(["ip", "link", "del", stranger], check=True)
    lab.assert_isolated()
