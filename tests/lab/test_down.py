"""`down` removes everything a lab made: after a clean run, a kill -9 and a half-made lab.

These tests build labs of their own (in their own directories, so with their own name prefix)
and never touch the shared one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwright.runtime.lab import Lab, LabError, LabHost, lab_prefix
from mailwright.runtime.lab.netns import (
    NETNS_ETC,
    RUN_ROOT,
    LabNetwork,
    Registry,
    process_start_time,
)
from tests.lab.conftest import DELEGATIONS, HOSTS, require_lab

# A lab made by a Python that is then killed with SIGKILL, so nothing of it runs a finally.
CRASHING_MAKER = """
import json, sys, time
from pathlib import Path
from mailwright.runtime.lab import Lab, LabHost
hosts = [LabHost(name, ipv4) for name, ipv4 in json.loads(sys.argv[2])]
delegations = {d: [tuple(s) for s in servers] for d, servers in json.loads(sys.argv[3]).items()}
Lab(Path(sys.argv[1])).up(hosts, delegations)
print("up", flush=True)
time.sleep(600)
"""


def lab_pids(directory: Path) -> set[int]:
    """Every process the lab in `directory` runs: recorded, and found in its namespaces."""
    network = LabNetwork(directory)
    pids = {r.pid for r in network.registry.processes if r.pid is not None}
    for name in network.names():
        listing = subprocess.run(
            ["ip", "netns", "pids", network.namespace(name)],
            capture_output=True,
            text=True,
            check=True,
        )
        pids |= {int(pid) for pid in listing.stdout.split()}
    return pids


def assert_nothing_left(directory: Path, pids: set[int]) -> None:
    prefix = lab_prefix(directory)
    for listing in (["ip", "netns", "list"], ["ip", "-o", "link", "show"]):
        assert (
            prefix not in subprocess.run(listing, capture_output=True, text=True, check=True).stdout
        )
    assert not [pid for pid in pids if process_start_time(pid) is not None]
    assert not list(NETNS_ETC.glob(f"{prefix}-*"))
    assert not (RUN_ROOT / prefix).exists()
    assert not (directory / "lab.json").exists()


@pytest.fixture
def lab_directory(tmp_path: Path) -> Iterator[Path]:
    require_lab()
    directory = tmp_path / "runtime"
    try:
        yield directory
    finally:
        Lab(directory).down()


def crash_a_lab(directory: Path) -> set[int]:
    """Make a lab in a child Python, kill -9 the child; the pids its lab left running."""
    hosts = json.dumps([[host.name, host.ipv4] for host in HOSTS])
    with subprocess.Popen(
        [sys.executable, "-c", CRASHING_MAKER, str(directory), hosts, json.dumps(DELEGATIONS)],
        stdout=subprocess.PIPE,
        text=True,
    ) as maker:
        try:
            assert maker.stdout is not None
            assert maker.stdout.readline() == "up\n"
        finally:
            os.kill(maker.pid, signal.SIGKILL)
    pids = lab_pids(directory)
    assert len(pids) >= 3  # named, unbound and Postfix's master outlive their maker
    return pids


def test_down_after_the_maker_was_killed_removes_everything(lab_directory: Path) -> None:
    pids = crash_a_lab(lab_directory)
    Lab(lab_directory).down()
    assert_nothing_left(lab_directory, pids)
    Lab(lab_directory).down()  # a second down finds nothing and does nothing


def test_the_next_up_cleans_what_a_killed_lab_left(lab_directory: Path) -> None:
    old = crash_a_lab(lab_directory)
    lab = Lab(lab_directory).up(HOSTS, DELEGATIONS)
    lab.assert_isolated()
    assert not [pid for pid in old if process_start_time(pid) is not None]
    new = lab_pids(lab_directory)
    lab.down()
    assert_nothing_left(lab_directory, new)


def test_down_copes_with_a_half_made_lab(lab_directory: Path) -> None:
    # The registry names things that were never made (a crash between writing and making),
    # and a namespace with the lab's prefix exists that the registry lost.
    network = LabNetwork(lab_directory)
    prefix = network.prefix
    registry = Registry(
        prefix,
        namespaces=["athena", "ghost"],
        links=[f"{prefix}br", f"{prefix}v0"],
        addresses={"athena": ["10.1.0.10"]},
    )
    registry.save(lab_directory / "lab.json")
    subprocess.run(["ip", "netns", "add", f"{prefix}-athena"], check=True)
    subprocess.run(["ip", "netns", "add", f"{prefix}-lost"], check=True)
    subprocess.run(["ip", "link", "add", f"{prefix}br", "type", "bridge"], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-lost", "sleep", "600"])
    try:
        Lab(lab_directory).down()
        assert sleeper.wait(timeout=10) != 0
        assert_nothing_left(lab_directory, {sleeper.pid})
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_a_clean_run_leaves_nothing(lab_directory: Path) -> None:
    lab = Lab(lab_directory).up([LabHost("solo", "10.9.0.10")], {})
    sink = lab.popen("solo", ["sleep", "600"])
    pids = lab_pids(lab_directory)
    assert sink.pid in pids
    lab.down()
    assert sink.poll() is not None
    assert_nothing_left(lab_directory, pids)


def test_up_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"^lab host name 'Athena!' is not lower-case"):
        LabHost("Athena!", "10.1.0.10")
    with pytest.raises(LabError, match="not an IPv4 address"):
        LabHost("athena", "10.1.0")
    with pytest.raises(LabError, match="unique and not 'internet'"):
        Lab(tmp_path).up([LabHost("internet", "10.1.0.10")], {})
