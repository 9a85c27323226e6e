"""`mailwright send`: a client's submission, in the internal format, to the sender's home server
(the seed's step 1). It finds the home server in the applied GAL and the address it listens on
through the runtime's discovery.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailwright.runtime.contract import read_gal
from mailwright.runtime.formats.message import Address, Attachment, Recipient, encode, new_message
from mailwright.runtime.mta.transfer import (
    TransferError,
    endpoints_in,
    recipients_payload,
    send_frame,
)


class SubmitError(Exception):
    """A message that could not be submitted; the message says why, in one line."""


@dataclass(frozen=True)
class Submission:
    sender: str
    password: str
    to: Sequence[str]
    cc: Sequence[str]
    subject: str
    body: str
    attachments: Sequence[Path] = ()


def parse_address(text: str) -> Address:
    """`TYPE:address`, or the type recognized from its shape (user@domain, c=..;.., NET/PO/BOX)."""
    prefix, sep, rest = text.partition(":")
    if sep and prefix.upper() in ("SMTP", "X400", "MS"):
        return Address(rest, type=prefix.upper())
    kind = "SMTP" if "@" in text else "X400" if "=" in text else "MS"
    return Address(text, type=kind)


def _home_of(state_dir: Path, sender: str) -> tuple[str, str, str, str, str]:
    """(organization, home server, alias, display name, primary SMTP address) of the mailbox
    owning `sender` (any of its addresses, or its alias), from the applied artifacts."""
    try:
        serial = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))["serial"]
    except (OSError, ValueError, KeyError):
        raise SubmitError(
            f"nothing is applied in {state_dir}; run `mailwright apply` first"
        ) from None
    wanted = sender.casefold()
    for gal_file in sorted((state_dir / "artifacts" / str(serial)).glob("*/gal.json")):
        for row in read_gal(gal_file):
            addresses = [*row.primary.values(), *(s.partition(":")[2] for s in row.secondary)]
            if wanted in {a.casefold() for a in addresses} | {row.alias.casefold()}:
                return (
                    gal_file.parent.name,
                    row.home_server,
                    row.alias,
                    row.display_name,
                    row.primary["SMTP"],
                )
    raise SubmitError(f"no mailbox has the address {sender}")


def submit(state_dir: Path, submission: Submission) -> str:
    """Submit in the internal format to the sender's home server (the seed's step 1);
    returns the message id once the home server's queue holds it."""
    organization, home, alias, display_name, address = _home_of(state_dir, submission.sender)
    endpoint = endpoints_in(state_dir)(home)
    if endpoint is None:
        raise SubmitError(f"{organization}'s server {home} is not running")
    try:
        attachments = tuple(
            Attachment(
                p.name,
                mimetypes.guess_type(p.name)[0] or "application/octet-stream",
                p.read_bytes(),
            )
            for p in submission.attachments
        )
    except OSError as exc:
        raise SubmitError(f"cannot read attachment: {exc}") from None
    recipients = [Recipient(parse_address(a), "to") for a in submission.to]
    recipients += [Recipient(parse_address(a), "cc") for a in submission.cc]
    # The mailbox sends as its primary SMTP address, whichever of its addresses named it.
    message = new_message(
        Address(address, display_name),
        recipients=recipients,
        subject=submission.subject,
        body=submission.body,
        attachments=attachments,
        domain=address.rpartition("@")[2],
    )
    document = {
        "user": alias,
        "password": submission.password,
        "message": encode(message),
        "rcpt": recipients_payload([r.address for r in recipients]),
    }
    try:
        asyncio.run(send_frame(*endpoint, "SUBMIT", document))
    except TransferError as exc:
        raise SubmitError(f"{home} refused the message: {exc}") from None
    return message.message_id
