"""Non-delivery reports parse back as RFC 3464 reports, field by field; never about a report."""

from __future__ import annotations

import datetime
import email
import email.policy
from email.message import EmailMessage, Message

from mailwright.runtime.formats.message import Address, InternalMessage, Recipient
from mailwright.runtime.mta.ndr import Failure, is_report, non_delivery_report

NOW = datetime.datetime(2026, 1, 2, 9, 30, tzinfo=datetime.UTC)
ORIGINAL = InternalMessage(
    message_id="<7.athena@dcnw.com>",
    sender=Address("jane@dcnw.com", "Jane Doe"),
    recipients=(Recipient(Address("nobody@minasi.com")),),
    subject="Lunch?",
    submit_time=NOW,
    body_text="Tuesday?\n",
)


def report() -> InternalMessage:
    failure = Failure(Address("nobody@minasi.com"), "5.1.1", "recipient not found")
    found = non_delivery_report(ORIGINAL, [failure], "hermes.dcnw.com", "postmaster@dcnw.com", NOW)
    assert found is not None
    return found


def test_report_structure_and_fields() -> None:
    ndr = report()
    assert ndr.recipients == (Recipient(ORIGINAL.sender),)
    assert ndr.rfc5322 is not None
    parsed = email.message_from_bytes(ndr.rfc5322, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert parsed["Subject"] == "Undeliverable: Lunch?"
    assert parsed["Auto-Submitted"] == "auto-replied"
    parts = parsed.get_payload()
    assert isinstance(parts, list)
    human, status, headers = parts
    assert isinstance(human, EmailMessage) and isinstance(headers, EmailMessage)
    assert isinstance(status, EmailMessage)
    assert "nobody@minasi.com: recipient not found (5.1.1)" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    per_message, per_recipient = blocks
    assert isinstance(per_message, Message) and isinstance(per_recipient, Message)
    assert per_message["Reporting-MTA"] == "dns; hermes.dcnw.com"
    assert per_recipient["Final-Recipient"] == "rfc822; nobody@minasi.com"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Diagnostic-Code"] == "x-mailwright; recipient not found"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <7.athena@dcnw.com>" in str(headers.get_payload())


def test_never_a_report_about_a_report() -> None:
    ndr = report()
    assert is_report(ndr)
    failure = Failure(Address("jane@dcnw.com"), "5.2.2", "mailbox full")
    assert (
        non_delivery_report(ndr, [failure], "athena.dcnw.com", "postmaster@dcnw.com", NOW) is None
    )
