"""`mailwright bundle` and `mailwright host run`: one server's bundle, served outside any
supervisor, as a machine of its own (or systemd, or a container) would serve it."""

from __future__ import annotations

import hashlib
import os
import poplib
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import MAILWRIGHT, SEED_SPECS, wait_until

OFF = {**os.environ, "MAILWRIGHT_RUNTIME": "off"}


def mailwright(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILWRIGHT, *args], capture_output=True, text=True, env=OFF, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("applied") / "state"
    done = mailwright("apply", *map(str, SEED_SPECS), "--state", str(folder), "--auto-approve")
    assert done.returncode == 0, done.stderr
    return folder


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_bundle_is_reproducible_and_keeps_its_secrets(state: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for out in (first, second):
        done = mailwright("bundle", "arlington", "--state", str(state), "--out", str(out))
        assert done.returncode == 0, done.stderr
    assert digest(first) == digest(second)
    names = set(digest(first))
    assert {"bundle.json", "host.json", "gal.json", "gwart.json", "servers.json"} <= names
    assert "addresses.json" not in names  # it runs where the spec puts it
    for key in first.glob("tls/*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_bundle_names_the_applied_servers_when_it_does_not_know_one(state: Path) -> None:
    done = mailwright("bundle", "hermez", "--state", str(state), "--out", "x")
    assert done.returncode == 1
    assert done.stderr == (
        "error: hermez is no applied server; the applied servers are DCNW/athena, DCNW/dns, "
        "DCNW/hermes, Minasi/arlington\n"
    )


@pytest.fixture
def served(state: Path, tmp_path: Path) -> Iterator[str]:
    """Arlington's bundle served by `mailwright host run` on a loopback address of its own,
    on the spec's ports (root only), stopped by its pid."""
    if os.geteuid() != 0:
        if os.environ.get("MAILWRIGHT_REQUIRE_TOOLS") == "1":
            pytest.fail("host run listens on the spec's ports: root is needed")
        pytest.skip("host run listens on the spec's ports: root is needed")
    bundle = tmp_path / "arlington"
    assert (
        mailwright("bundle", "arlington", "--state", str(state), "--out", str(bundle)).returncode
        == 0
    )
    address = "127.77.0.10"
    process = subprocess.Popen(
        [MAILWRIGHT, "host", "run", str(bundle), "--bind", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        endpoints = bundle.with_name("arlington.data") / "endpoints.json"
        wait_until(endpoints.exists, 20, "the host to listen")
        yield address
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert process.stderr is not None and "Traceback" not in process.stderr.read()
        for pipe in (process.stdout, process.stderr):
            assert pipe is not None
            pipe.close()


def test_host_run_serves_the_bundles_roles(served: str) -> None:
    client = poplib.POP3(served, 110, timeout=10)
    try:
        client.user("mark")
        assert client.pass_("demo-mark").startswith(b"+OK")
        assert client.stat() == (0, 0)
    finally:
        client.quit()
