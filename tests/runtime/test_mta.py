"""The MTA on one real host, the seed's Athena: submission, routing, delivery into the store,
every proxy type, non-delivery reports parsed back field by field, loops, `send` errors, `track`.

The seed is applied to a state directory once; Athena runs as a real process on 127.0.0.1 for
the whole module, and each test tells its messages apart by message id or subject.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import email.parser
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest

from mailwright.runtime.formats.message import Address, Hop, InternalMessage, Recipient, encode
from mailwright.runtime.mta.agent import MAX_HOPS
from mailwright.runtime.mta.transfer import TransferError, recipients_payload, send_frame
from tests.helpers import (
    SEED_SPECS,
    Endpoint,
    Mailwright,
    Messages,
    WaitUntil,
    transfer_tls,
)

JANE = "jane@dcnw.com"
PAT = "pat@dcnw.com"
PASSWORDS = {"jane": "demo-jane", "pat": "demo-pat"}  # examples/seed/README.md
DELIVERY_TIMEOUT = 15.0

Pop3Messages = Callable[[Path, str, str, str], list[EmailMessage]]


def by_id(messages: list[EmailMessage], message_id: str) -> list[EmailMessage]:
    return [m for m in messages if m["Message-ID"] == message_id]


def by_subject(messages: list[EmailMessage], subject: str) -> list[EmailMessage]:
    return [m for m in messages if m["Subject"] == subject]


class Athena:
    """The running Athena of the applied seed, and what the tests do with it."""

    def __init__(  # noqa: PLR0917 - the conftest's fixtures, gathered once
        self,
        state: Path,
        mailwright: Mailwright,
        endpoint: Endpoint,
        maildir: Messages,
        pop3: Pop3Messages,
        wait_until: WaitUntil,
    ) -> None:
        self.state = state
        self.mailwright = mailwright
        self.endpoint = endpoint
        self.maildir = maildir
        self.pop3 = pop3
        self.wait_until = wait_until

    def send(self, *args: str, sender: str = JANE, password: str = "") -> str:
        """`mailwright send` as a mailbox of DCNW; returns the message id it printed."""
        done = self.mailwright(
            *("send", "--from", sender, *args, "--password-env", "MW_TEST_PASSWORD"),
            *("--state", str(self.state)),
            env={"MW_TEST_PASSWORD": password or PASSWORDS[sender.partition("@")[0]]},
        )
        assert done.returncode == 0, done.stderr
        message_id = done.stdout.strip()
        assert message_id.startswith("<") and message_id.endswith(">")
        return message_id

    def messages(self, alias: str) -> list[EmailMessage]:
        return self.maildir(self.state, "athena", alias)

    def wait_for(self, alias: str, message_id: str) -> None:
        self.wait_until(
            lambda: bool(by_id(self.messages(alias), message_id)),
            DELIVERY_TIMEOUT,
            f"{message_id} in {alias}'s mailbox",
        )

    def retrieve(self, alias: str) -> list[EmailMessage]:
        return self.pop3(self.state, "athena", alias, PASSWORDS[alias])

    def report(self, subject: str) -> EmailMessage:
        """The one non-delivery report about `subject` in Jane's mailbox, over POP3."""
        wanted = f"Undeliverable: {subject}"
        self.wait_until(
            lambda: bool(by_subject(self.messages("jane"), wanted)),
            DELIVERY_TIMEOUT,
            f"the report '{wanted}'",
        )
        [report] = by_subject(self.retrieve("jane"), wanted)
        return report

    def transfer(self, message: InternalMessage, recipients: list[Address]) -> str:
        """Hand Athena a message over its transfer port as another MTA would (XFER)."""
        document = {
            "message": encode(message),
            "rcpt": recipients_payload(recipients),
            "from": "hermes",
        }
        address = self.endpoint(self.state, "athena", "transfer")
        tls = transfer_tls(self.state, "DCNW", "athena", as_server="hermes")
        return asyncio.run(send_frame(*address, "XFER", document, tls))

    def tracking(self) -> list[dict[str, Any]]:
        log = self.state / "hosts" / "athena" / "tracking.jsonl"
        return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]

    def events(self, message_id: str) -> list[dict[str, Any]]:
        return [r for r in self.tracking() if r["message_id"] == message_id]

    def queue_is_empty(self) -> bool:
        return not any((self.state / "hosts" / "athena" / "queue").glob("*.msg"))


@pytest.fixture(scope="module")
def seed_state(tmp_path_factory: pytest.TempPathFactory, mailwright: Mailwright) -> Path:
    """The two seed organizations applied to a fresh state directory (serial 1)."""
    state = tmp_path_factory.mktemp("mta-seed") / "state"
    done = mailwright("apply", *map(str, SEED_SPECS), "--state", str(state), "--auto-approve")
    assert done.returncode == 0, done.stderr
    return state


@pytest.fixture(scope="module")
def dcnw_gal(seed_state: Path) -> dict[str, Any]:
    gal: dict[str, Any] = json.loads(
        (seed_state / "artifacts/1/DCNW/gal.json").read_text(encoding="utf-8")
    )
    return gal


@pytest.fixture(scope="module")
def athena_host(
    seed_state: Path, start_host: Callable[[Path, Path], subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    return start_host(seed_state / "artifacts/1/DCNW/hosts/athena.json", seed_state)


@pytest.fixture
def athena(  # noqa: PLR0917 - fixtures
    seed_state: Path,
    athena_host: subprocess.Popen[str],
    mailwright: Mailwright,
    endpoint: Endpoint,
    maildir_messages: Messages,
    pop3_messages: Pop3Messages,
    wait_until: WaitUntil,
) -> Athena:
    assert athena_host.poll() is None, "athena has stopped"
    return Athena(seed_state, mailwright, endpoint, maildir_messages, pop3_messages, wait_until)


# --- submission, routing, delivery ----------------------------------------------------------


def test_jane_to_pat_on_athena(tmp_path: Path, athena: Athena) -> None:
    attachment = tmp_path / "figures.bin"
    attachment.write_bytes(bytes(range(256)) * 4)
    message_id = athena.send(
        *("--to", PAT, "--subject", "Quarterly figures", "--body", "See the attachment, Pat."),
        *("--attach", str(attachment)),
    )
    athena.wait_for("pat", message_id)
    [message] = by_id(athena.retrieve("pat"), message_id)
    assert message["Subject"] == "Quarterly figures"
    assert message["From"].addresses[0].addr_spec == JANE
    assert [a.addr_spec for a in message["To"].addresses] == [PAT]
    body = message.get_body(("plain",))
    assert body is not None
    assert body.get_content().strip() == "See the attachment, Pat."
    [part] = list(message.iter_attachments())
    assert part.get_filename() == "figures.bin"
    assert part.get_content() == attachment.read_bytes()
    athena.wait_until(athena.queue_is_empty, DELIVERY_TIMEOUT, "athena's queue to drain")
    assert not by_id(athena.messages("jane"), message_id)


@pytest.mark.parametrize("kind", ["X400", "MS", "secondary SMTP", "upper-case SMTP"])
def test_every_proxy_type_resolves_to_the_mailbox(
    kind: str, athena: Athena, dcnw_gal: dict[str, Any]
) -> None:
    [jane] = [r for r in dcnw_gal["recipients"] if r["alias"] == "jane"]
    secondary = [s.partition(":")[2] for s in jane["secondary"] if s.startswith("smtp:")]
    address = {
        "X400": f"X400:{jane['primary']['X400']}",
        "MS": f"MS:{jane['primary']['MS']}",
        "secondary SMTP": secondary[0],
        "upper-case SMTP": jane["primary"]["SMTP"].upper(),
    }[kind]
    message_id = athena.send("--to", address, "--subject", f"by {kind}", "--body", kind, sender=PAT)
    athena.wait_for("jane", message_id)
    routed = [e for e in athena.events(message_id) if e["event"] == "routed"]
    assert [e["via"] for e in routed] == ["GAL: jane on this server"]
    delivered = [e for e in athena.events(message_id) if e["event"] == "delivered"]
    assert [e["mailbox"] for e in delivered] == ["jane"]


@pytest.mark.parametrize("sender", ["jane", "JANE@DCNW.COM", "jane.doe@dcnw.com", "DCNW/HQ/JANE"])
def test_a_mailbox_sends_as_its_primary_address_whichever_names_it(
    sender: str, athena: Athena
) -> None:
    subject = f"Sent as {sender}"
    message_id = athena.send(
        *("--to", PAT, "--subject", subject, "--body", "b"), sender=sender, password="demo-jane"
    )
    assert message_id.endswith("@dcnw.com>")
    athena.wait_for("pat", message_id)
    [message] = by_id(athena.messages("pat"), message_id)
    assert message["From"].addresses[0].addr_spec == JANE
    assert message["From"].addresses[0].display_name == "Jane Doe"


def test_a_message_that_cannot_be_rendered_is_refused_and_the_mta_goes_on(
    athena: Athena,
) -> None:
    # A line break in a header or a sender without a domain cannot become RFC 5322: refused
    # before it is queued, so it never reaches the store (where it would fail the MTA).
    done = athena.mailwright(
        *("send", "--from", JANE, "--to", PAT, "--subject", "two\nlines", "--body", "b"),
        *("--password-env", "MW_TEST_PASSWORD", "--state", str(athena.state)),
        env={"MW_TEST_PASSWORD": "demo-jane"},
    )
    assert_one_line_error(done, "athena", "554 5.6.0")
    bare = dataclasses.replace(with_hops(0, "From a bare alias"), sender=Address("jane"))
    with pytest.raises(TransferError, match=r"^554 5\.6\.0 ") as refused:
        athena.transfer(bare, [Address(PAT)])
    assert not refused.value.temporary
    message_id = athena.send("--to", PAT, "--subject", "Still delivering", "--body", "b")
    athena.wait_for("pat", message_id)
    assert not by_id(athena.messages("pat"), bare.message_id)


# --- non-delivery reports -------------------------------------------------------------------


def check_report(  # noqa: PLR0917 - one report, every field it must carry
    report: EmailMessage,
    original_id: str,
    subject: str,
    final_recipient: str,
    status: str,
    diagnostic: str,
) -> None:
    """An RFC 3464 report in an RFC 6522 multipart/report, field by field."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"].addresses[0].addr_spec == "postmaster@dcnw.com"
    assert [a.addr_spec for a in report["To"].addresses] == [JANE]
    assert report["Auto-Submitted"] == "auto-replied"
    parts = report.get_payload()
    assert isinstance(parts, list)
    human, status_part, headers = parts
    assert isinstance(human, EmailMessage)
    assert isinstance(status_part, EmailMessage)
    assert isinstance(headers, EmailMessage)

    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert final_recipient.partition("; ")[2] in text and f"({status})" in text

    # RFC 3464 §2.2 per-message fields, then §2.3 per-recipient fields.
    assert status_part.get_content_type() == "message/delivery-status"
    blocks = status_part.get_payload()
    assert isinstance(blocks, list)
    per_message, per_recipient = blocks
    assert isinstance(per_message, Message) and isinstance(per_recipient, Message)
    assert per_message["Reporting-MTA"] == "dns; athena.dcnw.com"
    assert per_message["Arrival-Date"]
    assert per_recipient["Final-Recipient"] == final_recipient
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == status
    assert per_recipient["Diagnostic-Code"] == f"x-mailwright; {diagnostic}"

    # RFC 6522 §3: the third part returns the original's headers, and only its headers.
    assert headers.get_content_type() == "text/rfc822-headers"
    payload = headers.get_payload()
    assert isinstance(payload, str)
    original = email.parser.HeaderParser().parsestr(payload)
    assert original["Message-ID"] == original_id
    assert original["Subject"] == subject
    assert JANE in original["From"]
    assert not original.get_payload()


def test_unknown_recipient_in_an_owned_domain(athena: Athena) -> None:
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@dcnw.com"
    subject = f"Hello {nobody}"
    message_id = athena.send("--to", nobody, "--subject", subject, "--body", "Anyone there?")
    check_report(
        athena.report(subject),
        message_id,
        subject,
        f"rfc822; {nobody}",
        "5.1.1",
        f"recipient not found: {nobody}",
    )


def test_no_route_for_an_x400_address_outside_every_address_space(athena: Athena) -> None:
    x400 = "c=DE;a= ;p=NOWHERE;s=Schmidt;"
    subject = "To an X.400 world we have no gateway for"
    message_id = athena.send("--to", f"X400:{x400}", "--subject", subject, "--body", "Hallo")
    check_report(
        athena.report(subject),
        message_id,
        subject,
        f"x-x400; {x400}",
        "5.4.4",
        f"no route to X400:{x400}",
    )


def with_hops(hops: int, subject: str) -> InternalMessage:
    """A message from Jane to Pat that has already passed through `hops` MTAs."""
    now = datetime.datetime.now(datetime.UTC)
    return InternalMessage(
        message_id=f"<hops-{uuid.uuid4().hex}@dcnw.com>",
        sender=Address(JANE, "Jane Doe"),
        recipients=(Recipient(Address(PAT)),),
        subject=subject,
        submit_time=now,
        body_text="Round and round.\n",
        hops=tuple(Hop(f"relay{n}", now) for n in range(hops)),
    )


@pytest.mark.parametrize("hops", [MAX_HOPS, MAX_HOPS + 5])
def test_a_looping_message_comes_back_as_loop_detected(hops: int, athena: Athena) -> None:
    # Athena adds its own hop: MAX_HOPS earlier hops make one more than the limit.
    message = with_hops(hops, f"Looping after {hops} hops")
    reply = athena.transfer(message, [Address(PAT)])
    assert reply == f"250 2.0.0 queued {message.message_id}"
    check_report(
        athena.report(message.subject),
        message.message_id,
        message.subject,
        f"rfc822; {PAT}",
        "5.4.6",
        "loop detected: too many hops",
    )
    assert not by_id(athena.messages("pat"), message.message_id)


def test_a_message_just_under_the_hop_limit_is_delivered(athena: Athena) -> None:
    message = with_hops(MAX_HOPS - 1, "Just under the limit")
    assert athena.transfer(message, [Address(PAT)]).startswith("250 ")
    athena.wait_for("pat", message.message_id)


def test_never_a_report_about_a_report(athena: Athena) -> None:
    # A message from an address nobody has, to another: its report is undeliverable too, and
    # that second failure is only logged, never reported (RFC 3461 §6.2).
    ghost, nobody = (f"{name}-{uuid.uuid4().hex[:8]}@dcnw.com" for name in ("ghost", "nobody"))
    message = InternalMessage(
        message_id=f"<ghost-{uuid.uuid4().hex}@dcnw.com>",
        sender=Address(ghost),
        recipients=(Recipient(Address(nobody)),),
        subject="From nowhere to nowhere",
        submit_time=datetime.datetime.now(datetime.UTC),
    )
    assert athena.transfer(message, [Address(nobody)]).startswith("250 ")

    def reports_to(address: str) -> list[str]:
        return [
            r["message_id"]
            for r in athena.tracking()
            if r["event"] == "received" and r["source"] == "ndr" and r["recipients"] == address
        ]

    def report_failed() -> bool:
        reports = reports_to(ghost)
        return (
            len(reports) == 1
            and any(e["event"] == "ndr" for e in athena.events(reports[0]))
            and athena.queue_is_empty()
        )

    athena.wait_until(report_failed, DELIVERY_TIMEOUT, "the report to the ghost sender to fail")
    [report_id] = reports_to(ghost)
    failed = [e for e in athena.events(report_id) if e["event"] == "ndr"]
    assert [(e["recipient"], e["status"]) for e in failed] == [(ghost, "5.1.1")]
    assert reports_to("postmaster@dcnw.com") == []


def test_a_second_hand_off_of_the_same_message_changes_nothing(athena: Athena) -> None:
    # Hand-offs are at-least-once: a previous MTA that crashed before it noted the 250 hands
    # the same message over again, after this one has delivered it and reported its failures.
    nobody = f"nobody-{uuid.uuid4().hex[:8]}@dcnw.com"
    message = InternalMessage(
        message_id=f"<twice-{uuid.uuid4().hex}@dcnw.com>",
        sender=Address(JANE, "Jane Doe"),
        recipients=(Recipient(Address(PAT)), Recipient(Address(nobody))),
        subject=f"Twice to pat and {nobody}",
        submit_time=datetime.datetime.now(datetime.UTC),
        body_text="Once is enough.\n",
    )
    recipients = [Address(PAT), Address(nobody)]

    handled = 0

    def processed() -> bool:
        reported = [e for e in athena.events(message.message_id) if e["event"] == "ndr"]
        return len(reported) == handled and athena.queue_is_empty()

    for handled in (1, 2):
        assert athena.transfer(message, recipients).startswith("250 ")
        athena.wait_until(processed, DELIVERY_TIMEOUT, f"hand-off {handled} to be handled")
    assert len(by_id(athena.messages("pat"), message.message_id)) == 1
    reports = by_subject(athena.messages("jane"), f"Undeliverable: {message.subject}")
    assert len(reports) == 1


# --- `mailwright send` errors ---------------------------------------------------------------


def assert_one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: ")
    for text in expected:
        assert text in line


def send_as_jane(
    mailwright: Mailwright, state: Path, password: str, sender: str = JANE
) -> subprocess.CompletedProcess[str]:
    return mailwright(
        *("send", "--from", sender, "--to", PAT, "--subject", "s", "--body", "b"),
        *("--password-env", "MW_TEST_PASSWORD", "--state", str(state)),
        env={"MW_TEST_PASSWORD": password},
    )


def test_send_with_a_wrong_password(athena: Athena) -> None:
    done = send_as_jane(athena.mailwright, athena.state, "demo-pat")
    assert_one_line_error(done, "athena", "authentication failed")


def test_send_from_an_address_no_mailbox_has(athena: Athena) -> None:
    done = send_as_jane(athena.mailwright, athena.state, "demo-jane", sender="ghost@dcnw.com")
    assert_one_line_error(done, "ghost@dcnw.com")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("athena_was", ["never started", "stopped"])
def test_send_to_a_home_server_that_is_unreachable(
    athena_was: str, tmp_path: Path, seed_state: Path, mailwright: Mailwright
) -> None:
    state = tmp_path / "state"
    shutil.copytree(seed_state, state, ignore=shutil.ignore_patterns("hosts"))
    if athena_was == "stopped":  # it left the endpoints it had behind
        folder = state / "hosts" / "athena"
        folder.mkdir(parents=True)
        address = f"127.0.0.1:{closed_port()}"
        (folder / "endpoints.json").write_text(
            json.dumps({"pop3": address, "transfer": address}), encoding="utf-8"
        )
    done = send_as_jane(mailwright, state, "demo-jane")
    assert_one_line_error(done, "athena")


# --- `mailwright track` ---------------------------------------------------------------------


def test_track_shows_received_routed_delivered(athena: Athena) -> None:
    message_id = athena.send(
        *("--to", PAT, "--cc", "jane.doe@dcnw.com"), *("--subject", "Tracked", "--body", "b")
    )

    def delivered() -> list[str]:
        return sorted(e["mailbox"] for e in athena.events(message_id) if e["event"] == "delivered")

    athena.wait_until(lambda: len(delivered()) == 2, DELIVERY_TIMEOUT, "both deliveries")
    assert delivered() == ["jane", "pat"]

    done = athena.mailwright("track", message_id, "--state", str(athena.state), "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert {e["host"] for e in events} == {"athena"}
    assert {e["message_id"] for e in events} == {message_id}
    assert {"received", "submitted", "routed", "delivered"} <= {e["event"] for e in events}
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)

    text = athena.mailwright("track", message_id, "--state", str(athena.state))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert [line.split()[1:3] for line in lines] == [["athena", e["event"]] for e in events]
    assert any("mailbox=pat" in line for line in lines)


def test_track_an_unknown_message(seed_state: Path, mailwright: Mailwright) -> None:
    done = mailwright("track", "<never-sent@dcnw.com>", "--state", str(seed_state))
    assert_one_line_error(done, "<never-sent@dcnw.com>")
