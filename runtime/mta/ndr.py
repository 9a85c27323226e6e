"""Non-delivery reports: RFC 3464 delivery status notifications in an RFC 6522 multipart/report.

A report goes to the sender's mailbox; a report is never sent about a report (RFC 3461 §6.2,
RFC 5321 §6.1: no loops of notifications).
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from mailwright.runtime.formats.message import Address, InternalMessage, Recipient
from mailwright.runtime.formats.render import to_rfc5322

REPORT_FLAG = "report"


@dataclass(frozen=True)
class Failure:
    recipient: Address
    status: str  # RFC 3463 enhanced status code, e.g. 5.1.1
    diagnostic: str  # why, in words


def is_report(message: InternalMessage) -> bool:
    return bool(message.extra.get(REPORT_FLAG))


def non_delivery_report(
    original: InternalMessage,
    failures: Sequence[Failure],
    reporting_mta: str,
    postmaster: str,
    now: datetime.datetime,
) -> InternalMessage | None:
    """The report for the sender, or None when the original is itself a report."""
    if is_report(original) or not failures:
        return None
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = email.utils.formataddr(("Mail Delivery System", postmaster))
    report["To"] = email.utils.formataddr((original.sender.display_name, original.sender.address))
    report["Subject"] = f"Undeliverable: {original.subject}"
    report["Date"] = email.utils.format_datetime(now)
    # The same failures of the same message make the same report, so a second hand-off of the
    # original (hand-offs are at-least-once) yields a report the store de-duplicates.
    message_id = _report_id(original, failures, reporting_mta)
    report["Message-ID"] = message_id
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834
    report.attach(MIMEText(_human(original, failures), "plain", "utf-8"))
    report.attach(_delivery_status(original, failures, reporting_mta))
    # RFC 5322 headers are ASCII (non-ASCII travels as encoded words), so this part stays 7bit.
    report.attach(MIMEText(_headers(original), "rfc822-headers", "us-ascii"))
    return InternalMessage(
        message_id=message_id,
        sender=Address(postmaster, "Mail Delivery System"),
        recipients=(Recipient(original.sender),),
        subject=str(report["Subject"]),
        submit_time=now,
        rfc5322=report.as_bytes(),
        extra={REPORT_FLAG: True},
    )


def _report_id(original: InternalMessage, failures: Sequence[Failure], reporting_mta: str) -> str:
    failed = sorted(f"{f.recipient.type}:{f.recipient.address.casefold()}" for f in failures)
    key = "|".join([original.message_id, *failed]).encode("utf-8")
    return f"<ndr.{hashlib.sha256(key).hexdigest()[:32]}@{reporting_mta}>"


def _human(original: InternalMessage, failures: Sequence[Failure]) -> str:
    lines = [f"Your message '{original.subject}' could not be delivered to:", ""]
    lines += [f"  {f.recipient.address}: {f.diagnostic} ({f.status})" for f in failures]
    return "\n".join(lines) + "\n"


def _delivery_status(original: InternalMessage, failures: Sequence[Failure], mta: str) -> Message:
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {mta}"
    per_message["Arrival-Date"] = email.utils.format_datetime(original.submit_time)
    blocks: list[Message | str] = [per_message]
    for failure in failures:
        block = Message()
        kind = (
            "rfc822" if failure.recipient.type == "SMTP" else f"x-{failure.recipient.type.lower()}"
        )
        block["Final-Recipient"] = f"{kind}; {failure.recipient.address}"
        block["Action"] = "failed"
        block["Status"] = failure.status
        block["Diagnostic-Code"] = f"x-mailwright; {failure.diagnostic}"
        blocks.append(block)
    part = Message()
    part.set_type("message/delivery-status")
    part.set_payload(blocks)
    return part


def _headers(original: InternalMessage) -> str:
    text = to_rfc5322(original).decode("ascii", "replace")
    return text.split("\r\n\r\n", 1)[0].replace("\r\n", "\n") + "\n"
