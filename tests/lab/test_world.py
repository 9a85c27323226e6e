"""The lab's internet: recursive DNS through the lab root, and a real Postfix for example.net."""

from __future__ import annotations

import mailbox
import sys
import uuid
from pathlib import Path

from mailwright.runtime.lab import INTERNET, WORLD_DOMAIN, Lab
from tests.helpers import parse_message, wait_until
from tests.lab.conftest import ARLINGTON, ATHENA, DCNW, MINASI


def messages_with(maildir: Path, marker: str) -> list[bytes]:
    if not (maildir / "new").is_dir():
        return []
    found = [path.read_bytes() for path in (maildir / "new").iterdir()]
    return [data for data in found if marker.encode() in data]


def test_dig_resolves_a_delegated_mx_through_unbound_and_the_lab_root(lab: Lab) -> None:
    # resolv.conf -> unbound -> the lab root (delegation with glue) -> athena's own named.
    for name in (INTERNET, ARLINGTON.name):
        mx = lab.run(name, ["dig", "+short", "+time=2", "MX", DCNW]).stdout.split()
        assert mx == ["10", f"{ATHENA.name}.{DCNW}."]
        address = lab.run(name, ["dig", "+short", "+time=2", f"{ATHENA.name}.{DCNW}"]).stdout
        assert address.split() == [ATHENA.ipv4]


def test_the_root_answers_for_example_net(lab: Lab) -> None:
    root = lab.world.root_server
    answer = lab.run(ATHENA.name, ["dig", "+short", f"@{root}", "MX", WORLD_DOMAIN]).stdout
    assert answer.split() == ["10", f"mx.{WORLD_DOMAIN}."]
    # The root is authoritative only: it refers a delegated domain onward, with glue.
    referral = lab.run(ATHENA.name, ["dig", f"@{root}", "+norecurse", "MX", MINASI]).stdout
    assert f"ns.{MINASI}." in referral and ARLINGTON.ipv4 in referral


def test_swaks_from_a_host_delivers_to_the_example_net_postfix(lab: Lab) -> None:
    marker = f"lab-swaks-{uuid.uuid4()}"
    lab.run(
        ATHENA.name,
        [
            "swaks",
            "--server",
            f"mx.{WORLD_DOMAIN}",
            "--from",
            f"someone@{DCNW}",
            "--to",
            f"someone@{WORLD_DOMAIN}",
            "--header",
            f"Subject: {marker}",
        ],
    )
    wait_until(lambda: bool(messages_with(lab.world_mailbox, marker)), 15, "the Maildir")
    [data] = messages_with(lab.world_mailbox, marker)
    message = parse_message(data)
    assert message["Subject"] == marker
    # Postfix's trace header names the client: athena's address, not the root namespace.
    assert ATHENA.ipv4 in str(message["Received"])


def test_the_example_net_postfix_sends_by_mx_to_a_delegated_domain(
    lab: Lab, tmp_path: Path
) -> None:
    inbox = tmp_path / "arlington-inbox"
    sink = lab.popen(
        ARLINGTON.name,
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "--nosetuid",
            "--listen",
            f"{ARLINGTON.ipv4}:25",
            "--class",
            "aiosmtpd.handlers.Mailbox",
            str(inbox),
        ],
    )
    try:
        lab.wait_for_tcp(INTERNET, ARLINGTON.ipv4, 25, timeout=10)
        marker = f"lab-sendmail-{uuid.uuid4()}"
        lab.sendmail(
            f"postmaster@{WORLD_DOMAIN}",
            [f"mark@{MINASI}"],
            f"From: postmaster@{WORLD_DOMAIN}\nTo: mark@{MINASI}\nSubject: {marker}\n\nhello\n",
        )

        def arrived() -> bool:
            return any(marker in str(m["Subject"]) for m in mailbox.Maildir(inbox, create=False))

        wait_until(lambda: inbox.is_dir() and arrived(), 30, f"mail in {inbox}")
        [message] = [m for m in mailbox.Maildir(inbox, create=False) if marker in str(m["Subject"])]
        assert message["X-RcptTo"] == f"mark@{MINASI}"
        assert message["X-Peer"].startswith(f"('{lab.world.mx}'")
    finally:
        lab.stop(sink.pid)
