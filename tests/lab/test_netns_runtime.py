"""The seed journey in the lab: `mailwright apply --runtime netns` runs each host of both seed
organizations in a network namespace of its own, at its spec address and on the real ports,
and the mail goes as it would between three machines.

Jane sends from inside athena's namespace; Hermes's IMS finds minasi.com's MX by recursive
resolution (the lab's unbound, its root server, Minasi's own DNS host); fetchmail, in the
`internet` namespace, reads Mark's mail from 10.2.0.10:110. Mail also goes both ways between
the organizations and the lab's Postfix for example.net. Isolation is checked before any
test sends anything, and `mailwright down` removes the whole lab.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailwright.runtime.lab import Lab
from tests.helpers import MAILWRIGHT, SEED_SPECS, require_tool, wait_until
from tests.lab.conftest import applied_in_the_lab, require_lab

PASSWORDS = {"jane": "demo-jane", "mark": "demo-mark"}
TIMEOUT = 30.0


@dataclass
class Seed:
    state: Path
    lab: Lab

    def mailwright(self, *args: str, inside: str | None = None) -> str:
        """`mailwright ARGS`, run inside the lab namespace `inside` if given; its stdout."""
        command = [MAILWRIGHT, *args]
        if inside is not None:
            command = [MAILWRIGHT, "lab", "exec", inside, "--", *command]
        env = {**os.environ, "MAILWRIGHT_STATE": str(self.state), "MW_PASSWORD": "demo-jane"}
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def send(self, to: str, subject: str) -> str:
        """Jane submits from athena's namespace: the message id."""
        return self.mailwright(
            *("send", "--from", "jane@dcnw.com", "--to", to, "--subject", subject),
            *("--body", f"{subject}, from the lab", "--password-env", "MW_PASSWORD"),
            inside="athena",
        ).strip()

    def stored(self, alias: str) -> list[bytes]:
        maildir = self.state / "hosts" / "arlington" / "store" / alias / "Maildir"
        return [p.read_bytes() for sub in ("new", "cur") for p in (maildir / sub).glob("*")]


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seed]:
    require_lab()
    require_tool("fetchmail")
    state = tmp_path_factory.mktemp("netns") / "state"
    with applied_in_the_lab(SEED_SPECS, state) as lab:
        yield Seed(state, lab)


@pytest.fixture
def lab(seed: Seed) -> Seed:
    """The seed's lab, checked to be isolated before the test sends anything."""
    seed.lab.assert_isolated()
    return seed


def test_each_service_listens_at_its_spec_address(lab: Seed) -> None:
    status = json.loads(lab.mailwright("status", "--json"))
    services = {name: host["services"] for name, host in status["hosts"].items()}
    assert services["Minasi/arlington"]["smtp"] == "10.2.0.10:25"
    assert services["Minasi/arlington"]["pop3"] == "10.2.0.10:110"
    assert services["DCNW/hermes"]["smtp"] == "10.1.0.20:25"
    assert services["DCNW/athena"]["transfer"] == "10.1.0.10:7025"


def test_the_internet_resolves_minasi_through_the_delegation(lab: Seed) -> None:
    dig = [require_tool("dig"), "+short", "+time=3", "+tries=2", "MX", "minasi.com"]
    assert lab.lab.run("internet", dig).stdout.strip() == "10 arlington.minasi.com."


def test_jane_to_mark_by_mx_and_fetchmail_from_the_internet(lab: Seed, tmp_path: Path) -> None:
    message_id = lab.send("mark@minasi.com", "Across the lab")
    wait_until(
        lambda: any(message_id.encode() in m for m in lab.stored("mark")), TIMEOUT, "Mark's copy"
    )
    # Hermes's IMS found Arlington by its MX record, through the lab's resolver.
    track = lab.mailwright("track", message_id)
    assert "mx" in track and "10 arlington.minasi.com. 10.2.0.10" in track
    assert "via=arlington.minasi.com." in track
    fetched = fetchmail(lab.lab, tmp_path)
    assert message_id.encode() in fetched


def test_jane_reaches_the_internet_and_the_internet_reaches_mark(lab: Seed) -> None:
    lab.send("someone@example.net", "To the world")
    mailbox = lab.lab.world_mailbox
    wait_until(
        lambda: any(b"To the world" in p.read_bytes() for p in mailbox.rglob("*") if p.is_file()),
        TIMEOUT,
        "the message in example.net's Postfix",
    )
    message = "From: someone@example.net\nTo: mark@minasi.com\nSubject: From the world\n\nHi\n"
    lab.lab.sendmail("someone@example.net", ["mark@minasi.com"], message)
    wait_until(
        lambda: any(b"From the world" in m for m in lab.stored("mark")),
        TIMEOUT,
        "Postfix's message in Mark's store",
    )


def fetchmail(lab: Lab, home: Path) -> bytes:
    """fetchmail in the `internet` namespace, from Arlington's POP3 at 10.2.0.10:110."""
    rcfile = home / "fetchmailrc"
    rcfile.write_text(f'poll 10.2.0.10 user "mark" there with password "{PASSWORDS["mark"]}"\n')
    rcfile.chmod(0o600)
    out = home / "fetched"
    command = [require_tool("fetchmail"), "-f", str(rcfile), "-p", "POP3", "--port", "110"]
    command += ["--keep", "--all", "--sslproto", "", "--nosyslog", "--mda", f"cat >> {out}"]
    env = {"HOME": str(home), "FETCHMAILHOME": str(home), "LC_ALL": "C", "PATH": "/usr/bin:/bin"}
    done = lab.run(
        "internet", ["env", *(f"{k}={v}" for k, v in env.items()), *command], check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out.read_bytes()


def test_down_removes_the_lab(seed: Seed) -> None:
    """Last: the module's lab goes, and a second `down` finds nothing to do."""
    prefix = seed.lab.network.prefix
    seed.mailwright("down")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert prefix not in listed.stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert prefix not in links.stdout
    assert not (seed.state / "runtime" / "lab.json").exists()
    assert seed.mailwright("down") == "The runtime was not running.\n"
