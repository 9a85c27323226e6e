"""The seed article's journey, end to end, across two organizations on loopback.

Both seed specs are applied to one state directory and their four hosts run as real
processes (DCNW's athena, hermes and dns; Minasi's arlington), each from its bundle on a
loopback address of its own, started and stopped by the conftest's start_host. Jane, on
Athena, sends to mark@minasi.com with an attachment: Athena's MTA hands it to Hermes (GWART),
Hermes's IMS converts it to RFC 5322, finds minasi.com's MX through the embedded DNS and
delivers over SMTP to Arlington's IMS, which converts it back and hands it to Arlington's
store. Mark reads it with three POP3 clients (poplib, curl, fetchmail); his reply travels the
same way back; a message to Paula (POP3 off for her) is stored but she cannot log in; a
message to nobody comes back as a non-delivery report.
"""

from __future__ import annotations

import json
import os
import poplib
import subprocess
import time
from collections.abc import Callable
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SEED_SPECS, Mailwright, parse_message, require_tool

HOSTS = {"athena": "DCNW", "hermes": "DCNW", "dns": "DCNW", "arlington": "Minasi"}
DELIVERY_TIMEOUT = 20.0
CLIENT_TIMEOUT = 30.0
JANE, MARK = "jane@dcnw.com", "mark@minasi.com"
# Seed passwords are `demo-<alias>` (examples/seed/README.md).
PASSWORDS = {"jane": "demo-jane", "mark": "demo-mark", "paula": "demo-paula"}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DELIVERY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class Seed:
    """The two seed organizations applied to `state`, their four hosts running."""

    def __init__(self, state: Path, mailwright: Mailwright) -> None:
        self.state = state
        self.mailwright = mailwright

    def endpoint(self, server: str, service: str) -> tuple[str, int]:
        endpoints = json.loads((self.state / "hosts" / server / "endpoints.json").read_text())
        host, _, port = endpoints[service].rpartition(":")
        return host, int(port)

    # --- what users do --------------------------------------------------------------------------

    def address(self, server: str) -> str:
        """The loopback address a host listens on (and sends from)."""
        endpoints = json.loads((self.state / "hosts" / server / "endpoints.json").read_text())
        return str(endpoints["transfer"].rpartition(":")[0])

    def send(self, sender: str, to: str, subject: str, *options: str) -> str:
        """`mailwright send` as a seed mailbox; the message id it printed."""
        alias = sender.partition("@")[0]
        done = self.mailwright(
            *("send", "--from", sender, "--to", to, "--subject", subject, *options),
            *("--password-env", "MW_SEED_PASSWORD", "--state", str(self.state)),
            env={"MW_SEED_PASSWORD": PASSWORDS[alias]},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def maildir(self, server: str, alias: str) -> list[Path]:
        maildir = self.state / "hosts" / server / "store" / alias / "Maildir"
        return sorted(p for sub in ("new", "cur") for p in (maildir / sub).glob("*"))

    def wait_for(self, server: str, alias: str, message_id: str) -> Path:
        def found() -> list[Path]:
            return [
                p
                for p in self.maildir(server, alias)
                if parse_message(p.read_bytes())["Message-ID"] == message_id
            ]

        wait_until(lambda: bool(found()), f"{message_id} in {alias}'s mailbox")
        [path] = found()
        return path

    def report_for(self, server: str, alias: str, subject: str) -> EmailMessage:
        def found() -> list[EmailMessage]:
            messages = [parse_message(p.read_bytes()) for p in self.maildir(server, alias)]
            return [m for m in messages if m["Subject"] == f"Undeliverable: {subject}"]

        wait_until(lambda: bool(found()), f"the report about {subject!r}")
        [report] = found()
        return report

    def retrieve(self, server: str, user: str) -> list[bytes]:
        """Every message of a mailbox over POP3 with poplib, as bytes; nothing deleted."""
        client = poplib.POP3(*self.endpoint(server, "pop3"), timeout=CLIENT_TIMEOUT)
        try:
            client.user(user)
            client.pass_(PASSWORDS[user])
            count, _ = client.stat()
            return [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
        finally:
            client.quit()

    def track(self, message_id: str) -> list[dict[str, Any]]:
        done = self.mailwright("track", message_id, "--json", "--state", str(self.state))
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture(scope="module")
def seed(
    tmp_path_factory: pytest.TempPathFactory,
    mailwright: Mailwright,
    start_host: Callable[[Path, Path], subprocess.Popen[str]],
) -> Seed:
    """Both seed specs applied (the runtime left to the test) and the four hosts started; the
    conftest's start_host stops them by pid when the module ends."""
    state = tmp_path_factory.mktemp("seed-journey") / "state"
    done = mailwright("apply", *map(str, SEED_SPECS), "--state", str(state), "--auto-approve")
    assert done.returncode == 0, done.stderr
    for server, organization in HOSTS.items():
        start_host(state / "artifacts" / "1" / organization / "hosts" / f"{server}.json", state)
    return Seed(state, mailwright)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty HOME, so no ~/.curlrc or ~/.fetchmailrc of the user interferes."""
    return tmp_path_factory.mktemp("home")


def client_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**env, "HOME": str(home), "FETCHMAILHOME": str(home), "LC_ALL": "C"}


def curl(home: Path, pop3: tuple[str, int], user: str, number: int) -> bytes:
    credentials = f"{user}:{PASSWORDS[user]}"
    url = f"pop3://{pop3[0]}:{pop3[1]}/{number}"
    done = subprocess.run(
        [require_tool("curl"), "-q", "-sS", "--noproxy", "*", "-u", credentials, url],
        capture_output=True,
        env=client_env(home),
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def fetchmail(home: Path, pop3: tuple[str, int], user: str, out: Path) -> list[bytes]:
    """fetchmail --keep --all, each message into a file of its own (LF line ends)."""
    executable = require_tool("fetchmail")
    rcfile = home / f"fetchmailrc-{user}"
    address, port = pop3
    rcfile.write_text(f'poll {address} user "{user}" there with password "{PASSWORDS[user]}"\n')
    rcfile.chmod(0o600)
    mda = home / "mda.sh"
    mda.write_text('#!/bin/sh\nn=$(ls "$1" | wc -l)\nexec cat > "$1/$(printf %03d "$n")"\n')
    mda.chmod(0o755)
    out.mkdir()
    command = [executable, "-f", str(rcfile), "-v", "--nosyslog", "-p", "POP3", "--port"]
    # --sslproto '': plain POP3 (fetchmail would insist on STLS); --invisible: no Received of
    # fetchmail's own, so what arrives compares with what the server holds.
    command += [str(port), "--keep", "--all", "--sslproto", "", "--invisible"]
    command += ["--mda", f"{mda} {out}", address]
    done = subprocess.run(
        command,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=client_env(home),
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    log = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, log
    return [path.read_bytes() for path in sorted(out.iterdir())]


def received(message: EmailMessage) -> list[str]:
    return [" ".join(str(value).split()) for value in message.get_all("Received") or []]


def events(track: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(event["host"], event["event"]) for event in track]


def delivery_status(report: EmailMessage) -> dict[str, str]:
    [part] = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    blocks = part.get_payload()
    assert isinstance(blocks, list) and len(blocks) == 2
    recipient = blocks[1]
    assert isinstance(recipient, Message)
    return {key: str(value) for key, value in recipient.items()}


BODY = "Mark,\n\nthe plan for the Arlington office is attached.\n\nJane\n"
ATTACHMENT = bytes(range(256)) * 20 + b"the end\n"


def test_jane_to_mark_across_the_internet(seed: Seed, home: Path, tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_text(BODY, encoding="utf-8")
    plan = tmp_path / "office-plan.pdf"
    plan.write_bytes(ATTACHMENT)
    subject = "The Arlington office"
    options = ("--body-file", str(body), "--attach", str(plan))
    message_id = seed.send(JANE, MARK, subject, *options)
    seed.wait_for("arlington", "mark", message_id)

    # poplib: the message as Arlington's store serves it.
    [served] = [m for m in seed.retrieve("arlington", "mark") if message_id.encode() in m]
    message = parse_message(served)
    assert message["Subject"] == subject
    assert message["From"] == "Jane Doe <jane@dcnw.com>"
    text = message.get_body(("plain",))
    assert text is not None and text.get_content().replace("\r\n", "\n") == BODY
    [attachment] = message.iter_attachments()
    assert attachment.get_filename() == "office-plan.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_payload(decode=True) == ATTACHMENT
    # The trace, newest on top: Arlington's IMS took it from Hermes, whose IMS converted it.
    arlington, hermes = received(message)
    assert arlington.startswith(
        f"from hermes.dcnw.com ([{seed.address('hermes')}]) "
        "by arlington.minasi.com (mailwright IMS) with ESMTPS;"
    )
    assert hermes.startswith("by hermes.dcnw.com (mailwright IMS);")

    # curl and fetchmail get the same bytes (fetchmail's MDA gets LF line ends).
    pop3 = seed.endpoint("arlington", "pop3")
    number = seed.retrieve("arlington", "mark").index(served) + 1
    assert curl(home, pop3, "mark", number) == served
    fetched = fetchmail(home, pop3, "mark", tmp_path / "fetched")
    assert served.replace(b"\r\n", b"\n") in fetched

    # `mailwright track` shows the whole path, host by host.
    path = events(seed.track(message_id))
    for step in [
        ("athena", "submitted"),
        ("athena", "routed"),
        ("athena", "transferred"),
        ("hermes", "received"),
        ("hermes", "gateway"),
        ("hermes", "converted"),
        ("hermes", "mx"),
        ("hermes", "delivered"),
        ("arlington", "received"),
        ("arlington", "converted"),
        ("arlington", "delivered"),
    ]:
        assert step in path, (step, path)
    track = seed.track(message_id)
    # The MX lookup, as the local runtime's DNS answered it (the spec's address of Arlington).
    [mx] = [e for e in track if e["host"] == "hermes" and e["event"] == "mx"]
    assert (mx["domain"], mx["exchangers"]) == (
        "minasi.com",
        ["10 arlington.minasi.com. 10.2.0.10"],
    )
    [out] = [e for e in track if e["host"] == "hermes" and e["event"] == "delivered"]
    assert out["via"] == "arlington.minasi.com."
    [stored] = [e for e in track if e["host"] == "arlington" and e["event"] == "delivered"]
    assert stored["mailbox"] == "mark"
    assert path.index(("athena", "submitted")) < path.index(("hermes", "received"))


def test_mark_replies_and_jane_gets_it_the_same_way_back(seed: Seed) -> None:
    subject = "Re: The Arlington office"
    message_id = seed.send(MARK, JANE, subject, "--body", "Thanks, Jane. Looks good.\n")
    seed.wait_for("athena", "jane", message_id)
    [served] = [m for m in seed.retrieve("athena", "jane") if message_id.encode() in m]
    message = parse_message(served)
    assert message["Subject"] == subject
    assert message["From"] == "Mark Minasi <mark@minasi.com>"
    text = message.get_body(("plain",))
    assert text is not None
    assert text.get_content().replace("\r\n", "\n") == "Thanks, Jane. Looks good.\n"
    hermes, arlington = received(message)
    assert hermes.startswith(
        f"from arlington.minasi.com ([{seed.address('arlington')}]) "
        "by hermes.dcnw.com (mailwright IMS) with ESMTPS;"
    )
    assert arlington.startswith("by arlington.minasi.com (mailwright IMS);")
    path = events(seed.track(message_id))
    for step in [
        ("arlington", "submitted"),
        ("arlington", "gateway"),
        ("arlington", "delivered"),
        ("hermes", "received"),
        ("hermes", "transferred"),
        ("athena", "delivered"),
    ]:
        assert step in path, (step, path)


def test_paula_gets_mail_but_not_over_pop3(seed: Seed) -> None:
    message_id = seed.send(JANE, "paula@minasi.com", "For Paula", "--body", "Hello Paula.\n")
    stored = seed.wait_for("arlington", "paula", message_id)
    assert parse_message(stored.read_bytes())["Subject"] == "For Paula"
    client = poplib.POP3(*seed.endpoint("arlington", "pop3"), timeout=CLIENT_TIMEOUT)
    try:
        client.user("paula")
        with pytest.raises(poplib.error_proto) as refused:
            client.pass_(PASSWORDS["paula"])
        assert refused.value.args[0].startswith(b"-ERR [AUTH]")
    finally:
        client.close()


def test_a_message_to_nobody_comes_back_to_jane(seed: Seed) -> None:
    subject = "To nobody at Minasi"
    message_id = seed.send(JANE, "nobody@minasi.com", subject, "--body", "Anyone there?\n")
    report = seed.report_for("athena", "jane", subject)
    assert report["To"] == "Jane Doe <jane@dcnw.com>"
    assert report.get_content_type() == "multipart/report"
    fields = delivery_status(report)
    assert fields["Final-Recipient"] == "rfc822; nobody@minasi.com"
    assert fields["Action"] == "failed"
    assert fields["Status"] == "5.1.1"
    # Arlington refused the recipient at RCPT; Hermes made the report.
    assert "550 5.1.1" in fields["Diagnostic-Code"]
    [ndr] = [e for e in seed.track(message_id) if e["event"] == "ndr"]
    assert (ndr["host"], ndr["status"]) == ("hermes", "5.1.1")
    assert not [p for p in seed.maildir("arlington", "mark") if b"Anyone there?" in p.read_bytes()]
