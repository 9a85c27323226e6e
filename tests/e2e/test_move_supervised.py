"""Move Mailbox under the real runtime, with `apply` itself killed (kill -9) part way.

Acme runs under the supervisor (MAILWRIGHT_RUNTIME=on, 127.0.1.x). Ann has 500 messages on
alpha. An apply that homes her on beta is killed at some point of its run: while planning,
writing the artifacts, launching, or waiting for the move. Then the operator does what the
lock error tells them (`force-unlock`) and applies again; once that apply returns, every
message is at beta exactly once, under its own name, and POP3 lists every UIDL it did before.
"""

from __future__ import annotations

import json
import os
import poplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import argon2
import pytest

from mailwright.runtime.store.mailstore import MailStore
from tests.helpers import MAILWRIGHT

SPEC = """\
organization: {{name: Acme, domains: [acme.test]}}
sites:
  - name: Main
    addressing: {{smtp: "%m@acme.test"}}
    servers:
      - {{name: alpha, fqdn: alpha.acme.test, ipv4: 10.9.0.1, roles: [store]}}
      - {{name: beta, fqdn: beta.acme.test, ipv4: 10.9.0.2, roles: [store]}}
mailboxes:
  - {{alias: ann, home_server: {home}, password: "{hash}", given_name: Ann, surname: A}}
"""
PASSWORD = "pw-ann"
SEEDED = 500


class Organization:
    def __init__(self, folder: Path) -> None:
        self.folder, self.state, self.spec = folder, folder / "state", folder / "acme.yaml"
        hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        self.hash = hasher.hash(PASSWORD)
        self.env = {**os.environ, "MAILWRIGHT_RUNTIME": "on"}

    def command(self, *args: str) -> list[str]:
        return [MAILWRIGHT, *args, "--state", str(self.state)]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def apply(self, home: str) -> None:
        self.spec.write_text(SPEC.format(home=home, hash=self.hash), encoding="utf-8")
        done = self.run("apply", str(self.spec), "--auto-approve")
        assert done.returncode == 0, done.stdout + done.stderr

    def killed_apply(self, home: str, after: float) -> None:
        """`apply` killed (SIGKILL) `after` seconds into its run, wherever it is then."""
        self.spec.write_text(SPEC.format(home=home, hash=self.hash), encoding="utf-8")
        process = subprocess.Popen(
            self.command("apply", str(self.spec), "--auto-approve"),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            process.wait(after)
        except subprocess.TimeoutExpired:
            process.kill()
        process.wait()
        self.run("force-unlock")

    def maildir(self, server: str) -> dict[str, bytes]:
        maildir = self.state / "hosts" / server / "store" / "ann" / "Maildir"
        return {
            f"{sub}/{p.name}": p.read_bytes()
            for sub in ("new", "cur")
            for p in sorted((maildir / sub).glob("*"))
        }

    def uidls(self, server: str) -> list[str]:
        status = self.run("status", "--json")
        endpoint = json.loads(status.stdout)["hosts"][f"Acme/{server}"]
        host, _, port = endpoint["services"]["pop3"].rpartition(":")
        client = poplib.POP3(host, int(port), timeout=10)
        try:
            client.user("ann")
            client.pass_(PASSWORD)
            return [line.split()[1].decode() for line in client.uidl()[1]]
        finally:
            client.quit()


@pytest.fixture
def acme(tmp_path: Path) -> Iterator[Organization]:
    organization = Organization(tmp_path)
    yield organization
    organization.run("down")


@pytest.mark.parametrize("after", [0.3, 0.8, 1.5, 3.0])
def test_a_move_survives_apply_killed_part_way(acme: Organization, after: float) -> None:
    store = MailStore(acme.state / "hosts" / "alpha" / "store")
    for i in range(SEEDED):
        store.deliver("ann", f"<m{i}@acme.test>", f"Subject: {i}\n\nbody {i}\n".encode())
    seeded = acme.maildir("alpha")
    acme.apply("alpha")
    before = acme.uidls("alpha")

    acme.killed_apply("beta", after)
    acme.apply("beta")  # again, to the end
    deadline = time.monotonic() + 30
    while (acme.state / "hosts" / "alpha" / "store" / "ann").exists():
        assert time.monotonic() < deadline, "alpha still holds Ann's folder"
        time.sleep(0.05)

    assert acme.maildir("beta") == seeded
    assert sorted(acme.uidls("beta")) == sorted(before)


def test_apply_returns_once_the_mail_has_moved(acme: Organization) -> None:
    store = MailStore(acme.state / "hosts" / "alpha" / "store")
    for i in range(4 * SEEDED):  # enough to take longer than the hosts' reload
        store.deliver("ann", f"<m{i}@acme.test>", f"Subject: {i}\n\nbody {i}\n".encode())
    seeded = acme.maildir("alpha")
    acme.apply("alpha")
    acme.apply("beta")
    assert not (acme.state / "hosts" / "alpha" / "store" / "ann").exists()
    assert acme.maildir("beta") == seeded
