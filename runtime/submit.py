"""`mailwright send`: a client's submission, in the internal format, to the sender's home server
(the seed's step 1). It finds the home server in the applied GAL and the address it listens on
through the runtime's discovery.

The submission carries the mailbox's password, so it goes over TLS only (STARTTLS on the
transfer port, RFC 3207): the home server must hold a certificate of the organization's CA
(`<state>/pki/<ORG>/trust.pem`, which `apply` writes) for its fqdn. The client has no
certificate of its own; its password authenticates it.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailwright.runtime.contract import ContractError, read_gal, read_servers
from mailwright.runtime.formats.message import Address, Attachment, Recipient, encode, new_message
from mailwright.runtime.mta.transfer import (
    TransferError,
    recipients_payload,
    send_frame,
)
from mailwright.runtime.tls import ClientTls, transfer_client_context


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


def _applied_tree(state_dir: Path) -> Path:
    try:
        serial = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))["serial"]
    except (OSError, ValueError, KeyError):
        raise SubmitError(
            f"nothing is applied in {state_dir}; run `mailwright apply` first"
        ) from None
    return state_dir / "artifacts" / str(serial)


def _home_of(state_dir: Path, sender: str) -> tuple[str, str, str, str, str]:
    """(organization, home server, alias, display name, primary SMTP address) of the mailbox
    owning `sender` (any of its addresses, or its alias), from the applied artifacts."""
    wanted = sender.casefold()
    for gal_file in sorted(_applied_tree(state_dir).glob("*/gal.json")):
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
    endpoint = _transfer_address(state_dir, home)
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
    tls = _home_tls(state_dir, organization, home)
    try:
        asyncio.run(send_frame(*endpoint, "SUBMIT", document, tls))
    except TransferError as exc:
        raise SubmitError(f"{home} refused the message: {exc}") from None
    return message.message_id


def _transfer_address(state_dir: Path, server: str) -> tuple[str, int] | None:
    """Where the local runtime's host listens for transfer, as it reported it once listening
    (`endpoints.json` in its data folder, which the supervisor's status shows too)."""
    try:
        services = json.loads((state_dir / "hosts" / server / "endpoints.json").read_bytes())
        address, _, port = services["transfer"].rpartition(":")
        return address, int(port)
    except (OSError, ValueError, KeyError):
        return None


def _home_tls(state_dir: Path, organization: str, server: str) -> ClientTls:
    """TLS to the home server, verified against the organization's CAs for the fqdn the
    applied servers.json gives it; never the password in clear text."""
    trust = state_dir / "pki" / organization / "trust.pem"
    try:
        fqdn = read_servers(_applied_tree(state_dir) / organization / "servers.json")[server].fqdn
        context = transfer_client_context(trust)
    except (OSError, ValueError, KeyError, ContractError):  # ssl.SSLError is an OSError
        raise SubmitError(
            f"cannot verify {organization}'s server {server}: no usable {trust}; "
            "run `mailwright apply`"
        ) from None
    return ClientTls(context, server_hostname=fqdn)
