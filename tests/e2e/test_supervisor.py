"""`apply` launches the runtime: the supervisor, its hosts, status, down, restarts, rollback.

These tests run the real background runtime (MAILWRIGHT_RUNTIME=on) on the loopback addresses
the state assigns (127.0.1.x) and always bring it down again with `mailwright down`.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwright.runtime.formats.message import Address, InternalMessage, Recipient
from mailwright.runtime.mta.queue import MessageQueue, QueueEntry
from tests.helpers import EPOCH, MAILWRIGHT, SEED_DIR


class Runtime:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state = folder / "state"
        for spec in ("dcnw.yaml", "minasi.yaml"):
            shutil.copy(SEED_DIR / spec, folder / spec)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MAILWRIGHT_RUNTIME": "on", "SOURCE_DATE_EPOCH": EPOCH}
        return subprocess.run(
            [MAILWRIGHT, *args, "--state", str(self.state)],
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def apply(self) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "dcnw.yaml", "minasi.yaml", "--auto-approve")

    def status(self) -> dict[str, Any]:
        done = self.run("status", "--json")
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def serial(self) -> int:
        serial: int = json.loads((self.state / "state.json").read_text())["serial"]
        return serial

    def pids(self) -> dict[str, int]:
        return {name: host["pid"] for name, host in self.status()["hosts"].items()}


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    running = Runtime(tmp_path)
    yield running
    running.run("down")


def test_apply_starts_every_host_on_its_own_loopback_address(runtime: Runtime) -> None:
    done = runtime.apply()
    assert done.returncode == 0, done.stderr
    status = runtime.status()
    assert sorted(status["hosts"]) == ["DCNW/athena", "DCNW/dns", "DCNW/hermes", "Minasi/arlington"]
    addresses = {host["address"] for host in status["hosts"].values()}
    assert len(addresses) == 4 and all(a.startswith("127.") for a in addresses)
    hermes = status["hosts"]["DCNW/hermes"]
    assert hermes["state"] == "running"
    assert set(hermes["services"]) == {"smtp", "transfer"}
    assert all(
        endpoint.startswith(hermes["address"] + ":") for endpoint in hermes["services"].values()
    )


def test_reapply_reloads_and_restarts_only_what_listens_differently(runtime: Runtime) -> None:
    assert runtime.apply().returncode == 0
    before = runtime.pids()
    again = runtime.apply()
    assert "No changes" in again.stdout
    assert runtime.pids() == before
    spec = runtime.folder / "dcnw.yaml"
    spec.write_text(spec.read_text().replace("surname: Quinn", "surname: Quinlan"))
    done = runtime.apply()
    assert done.returncode == 0, done.stderr
    assert "reload DCNW/athena (mailboxes, gal.json changed)" in done.stdout
    assert runtime.pids() == before  # a mailbox changed: every host reloaded, none restarted
    assert {h["serial"] for h in runtime.status()["hosts"].values()} == {runtime.serial()}
    # A new role is a new port to listen on: that host alone restarts.
    spec.write_text(spec.read_text().replace("roles: [store]", "roles: [store, dns]"))
    done = runtime.apply()
    assert done.returncode == 0, done.stderr
    assert "restart DCNW/athena (listens differently: roles, services)" in done.stdout
    after = runtime.pids()
    assert after["DCNW/athena"] != before["DCNW/athena"]
    assert {k: v for k, v in after.items() if k != "DCNW/athena"} == {
        k: v for k, v in before.items() if k != "DCNW/athena"
    }
    athena = runtime.status()["hosts"]["DCNW/athena"]
    assert set(athena["services"]) == {"dns", "pop3", "transfer"}
    assert athena["serial"] == runtime.serial()


def test_a_host_that_dies_is_restarted(runtime: Runtime) -> None:
    assert runtime.apply().returncode == 0
    victim = runtime.pids()["DCNW/hermes"]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        hermes = runtime.status()["hosts"]["DCNW/hermes"]
        if hermes["restarts"] == 1 and hermes["state"] == "running" and hermes["pid"] != victim:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"hermes was not restarted: {hermes}")
    assert "exited with status -9" in hermes["last_error"]


def test_down_stops_everything_and_apply_brings_it_back(runtime: Runtime) -> None:
    assert runtime.apply().returncode == 0
    pids = list(runtime.pids().values())
    assert runtime.run("down").returncode == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert runtime.run("status").returncode == 1
    assert runtime.apply().returncode == 0  # no changes, but the runtime comes back
    assert all(h["state"] == "running" for h in runtime.status()["hosts"].values())


def test_a_failed_launch_rolls_back(runtime: Runtime) -> None:
    assert runtime.apply().returncode == 0
    serial = json.loads((runtime.state / "state.json").read_text())["serial"]
    # The next new host gets the next loopback address; take its transfer port first.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.1.5", 7025))  # the transfer port is 7025 with or without root
    blocker.listen()
    try:
        spec = runtime.folder / "minasi.yaml"
        spec.write_text(
            spec.read_text().replace(
                "mailboxes:",
                "      - name: brandon\n        fqdn: brandon.minasi.com\n        ipv4: 10.2.0.11\n"
                "        roles: [store]\n\nmailboxes:",
                1,
            )
        )
        done = runtime.apply()
    finally:
        blocker.close()
    assert done.returncode == 1
    assert "rolled back to state serial" in done.stderr
    assert json.loads((runtime.state / "state.json").read_text())["serial"] == serial
    assert sorted(runtime.status()["hosts"]) == [
        "DCNW/athena",
        "DCNW/dns",
        "DCNW/hermes",
        "Minasi/arlington",
    ]


def test_down_then_apply_resumes_queued_mail(runtime: Runtime) -> None:
    assert runtime.apply().returncode == 0
    assert runtime.run("down").returncode == 0
    # Mail that was queued on Athena when the runtime went down (written as the MTA does).
    message = InternalMessage(
        message_id="<queued-while-down@dcnw.com>",
        sender=Address("jane@dcnw.com", "Jane Doe"),
        recipients=(Recipient(Address("pat@dcnw.com")),),
        subject="queued while down",
        submit_time=datetime.datetime.now(datetime.UTC),
        body_text="still here\n",
    )
    queue = MessageQueue(runtime.state / "hosts" / "athena" / "queue")
    queue.put(QueueEntry.new(message, [Address("pat@dcnw.com")], "test"))
    assert runtime.apply().returncode == 0  # no changes: the runtime comes back and resumes
    maildir = runtime.state / "hosts" / "athena" / "store" / "pat" / "Maildir" / "new"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list(maildir.glob("*")):
        time.sleep(0.2)
    [delivered] = list(maildir.glob("*"))
    assert b"queued while down" in delivered.read_bytes()
    assert not list(queue.root.glob("*.msg"))


def test_a_second_supervisor_for_the_same_state_leaves_the_first_alone(runtime: Runtime) -> None:
    # Two applies that both find no supervisor running start two; only the first may stay.
    assert runtime.apply().returncode == 0
    first = runtime.status()["pid"]
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailwright.runtime.supervisor",
            "--state",
            str(runtime.state),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 0
    assert "another supervisor runs for this state" in second.stderr
    assert runtime.status()["pid"] == first
    assert all(host["state"] == "running" for host in runtime.status()["hosts"].values())
