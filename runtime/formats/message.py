"""The internal message format: how a message travels inside an organization.

A MAPI-like property set (sender, recipients with their address types, subject, plain and HTML
body, attachments, submit time, importance, internal message id, hop trace) encoded with CBOR
(RFC 8949) and versioned: every encoding carries `FORMAT_VERSION`, and `decode` reads every
version ever written, so a newer runtime reads an older queue. A message that came from the
internet also keeps its original RFC 5322 bytes, so the store can serve it exactly as it arrived.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import cbor2

FORMAT_VERSION = 1
IMPORTANCE = ("low", "normal", "high")


class MessageFormatError(ValueError):
    """Bytes that are not an internal message this runtime can read."""


@dataclass(frozen=True)
class Address:
    address: str
    display_name: str = ""
    type: str = "SMTP"  # SMTP, X400 or MS, as the proxy address types


@dataclass(frozen=True)
class Recipient:
    address: Address
    kind: str = "to"  # to, cc or bcc


@dataclass(frozen=True)
class Attachment:
    filename: str
    mime_type: str
    data: bytes


@dataclass(frozen=True)
class Hop:
    host: str
    time: datetime.datetime


@dataclass(frozen=True)
class InternalMessage:
    message_id: str
    sender: Address
    recipients: tuple[Recipient, ...]
    subject: str
    submit_time: datetime.datetime
    body_text: str = ""
    body_html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    importance: str = "normal"
    hops: tuple[Hop, ...] = ()
    rfc5322: bytes | None = None  # the bytes as they arrived from the internet, if they did
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def with_hop(self, host: str, when: datetime.datetime) -> InternalMessage:
        return replace(self, hops=(*self.hops, Hop(host, when)))


def encode(message: InternalMessage) -> bytes:
    return cbor2.dumps(
        {
            "v": FORMAT_VERSION,
            "id": message.message_id,
            "from": _address(message.sender),
            "rcpt": [{**_address(r.address), "kind": r.kind} for r in message.recipients],
            "subject": message.subject,
            "time": message.submit_time,
            "text": message.body_text,
            "html": message.body_html,
            "att": [
                {"name": a.filename, "type": a.mime_type, "data": a.data}
                for a in message.attachments
            ],
            "importance": message.importance,
            "hops": [{"host": h.host, "time": h.time} for h in message.hops],
            "rfc5322": message.rfc5322,
            "extra": message.extra,
        },
        datetime_as_timestamp=False,
        timezone=datetime.UTC,
    )


def _address(address: Address) -> dict[str, str]:
    return {"addr": address.address, "name": address.display_name, "type": address.type}


def decode(data: bytes) -> InternalMessage:
    try:
        document = cbor2.loads(data)
        version = document["v"]
    except (cbor2.CBORDecodeError, TypeError, KeyError, ValueError) as exc:
        raise MessageFormatError(f"not an internal message: {exc}") from None
    if version != FORMAT_VERSION:
        raise MessageFormatError(f"internal message format version {version} is unknown here")
    return _decode_v1(document)


def _decode_v1(document: dict[str, Any]) -> InternalMessage:
    return InternalMessage(
        message_id=document["id"],
        sender=_decode_address(document["from"]),
        recipients=tuple(Recipient(_decode_address(r), r["kind"]) for r in document["rcpt"]),
        subject=document["subject"],
        submit_time=document["time"],
        body_text=document["text"],
        body_html=document["html"],
        attachments=tuple(Attachment(a["name"], a["type"], a["data"]) for a in document["att"]),
        importance=document["importance"],
        hops=tuple(Hop(h["host"], h["time"]) for h in document["hops"]),
        rfc5322=document["rfc5322"],
        extra=document.get("extra", {}),
    )


def _decode_address(data: dict[str, str]) -> Address:
    return Address(data["addr"], data.get("name", ""), data.get("type", "SMTP"))


def new_message(
    sender: Address,
    *,
    recipients: list[Recipient],
    subject: str,
    body: str,
    attachments: tuple[Attachment, ...] = (),
    domain: str = "localhost",
) -> InternalMessage:
    """A message as a client composes it, with a fresh internal message id."""
    return InternalMessage(
        message_id=f"<{uuid.uuid4().hex}@{domain}>",
        sender=sender,
        recipients=tuple(recipients),
        subject=subject,
        submit_time=datetime.datetime.now(datetime.UTC),
        body_text=body,
        attachments=attachments,
    )
