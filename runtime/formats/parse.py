"""RFC 5322 text to the internal format: what the IMS makes of an internet message."""

from __future__ import annotations

import datetime
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import re
from email.message import EmailMessage
from typing import Any

from mailwright.runtime.formats.message import (
    IMPORTANCE,
    Address,
    Attachment,
    InternalMessage,
    Recipient,
)
from mailwright.runtime.mta.ndr import REPORT_FLAG

HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_LINE = re.compile(r"[^\n]*\n")
# The email package's feedparser.headerRE, less its odd cases (an empty name, "From "): a field
# name of printable ASCII but the colon (RFC 5322 §2.2).
_FIELD_NAME = re.compile(r"([\041-\071\073-\176]+):")
# RFC 5321 §4.1.2: a Path of a Dot-string local part and a domain of plain labels, then the
# MAIL/RCPT parameters; what the email package's get_angle_addr makes of the same text.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# RFC 5322 §3.4: a header field of one such address, bare or in <>, after a display name of
# plain atoms (what most clients write); what email.utils.getaddresses makes of the same text.
_PHRASE = rf"{_ATOM}(?:[ \t]+{_ATOM})*"
_PLAIN_MAILBOX = re.compile(
    rf"[ \t]*(?:(?:({_PHRASE})[ \t]*)?<({_DOT_ATOM_ADDRESS})>|({_DOT_ATOM_ADDRESS}))[ \t]*"
)
# What email.parser and its header and content managers raise for a malformed message.
_PARSE_ERRORS = (
    LookupError,
    ValueError,
    IndexError,
    TypeError,
    AttributeError,
    email.errors.MessageError,
)


def from_rfc5322(data: bytes, sender: str, recipients: list[str]) -> InternalMessage:
    """An internet message in the internal format: its header fields and MIME parts become the
    message's properties, and its bytes are kept, to be served exactly as they came.

    `sender` and `recipients` are the envelope's (RFC 5321 MAIL and RCPT): a report goes to the
    reverse-path, and a recipient of the envelope the header does not name is a Bcc."""
    null_sender = sender in ("", "<>")
    # RFC 5321 §4.5.5: mail from the null reverse-path is a notification; none is sent about it.
    extra: dict[str, Any] = {REPORT_FLAG: True} if null_sender else {}
    try:
        mail = parse_message(data)
        return _from_mail(mail, "" if null_sender else sender, recipients, data, extra)
    except _PARSE_ERRORS:
        # Too broken for the email package; the bytes still travel, which is what is served.
        return InternalMessage(
            message_id=email.utils.make_msgid(domain="mailwright.invalid"),
            sender=Address(sender),
            recipients=tuple(Recipient(Address(r), "bcc") for r in recipients),
            subject="",
            submit_time=datetime.datetime.now(datetime.UTC),
            rfc5322=data,
            extra=extra,
        )


def parse_message(data: bytes) -> EmailMessage:
    """The message as the email package parses it (policy.default). The package feeds a body
    through its parser a line at a time, which costs more than the rest of the conversion; a
    message that is one part (most mail) has only its header parsed, and gets its body as the
    parser would have set it: the rest of the bytes, as ASCII with surrogate escapes."""
    parser = email.parser.BytesParser(policy=email.policy.default)
    header, separator, body = _split_header(data)
    if separator:
        mail = _plain_header(header) or parser.parsebytes(header + separator)
        # A line the parser took for the body's first (a "From " line last) is in the payload.
        whole = not mail.defects and not mail.get_payload()
        if whole and mail.get_content_maintype() not in ("multipart", "message"):
            mail.set_payload(body.decode("ascii", "surrogateescape"))
            return mail
    return parser.parsebytes(data)


def _plain_header(header: bytes) -> EmailMessage | None:
    """The header as the email package's parser reads it, when every line is a field or the
    continuation of one (then it finds no defect); None for anything else, for the parser.
    A field's raw value is what policy.header_source_parse makes: the text after the colon
    without leading blanks, its folded lines kept, the last line end dropped."""
    fields: list[list[str]] = []
    for line in _HEADER_LINE.findall(header.decode("ascii", "surrogateescape") + "\n"):
        if line[0] in " \t" and fields:
            fields[-1][1] += line
        elif field := _FIELD_NAME.match(line):
            fields.append([field[1], line[field.end() :].lstrip(" \t")])
        else:
            return None
    mail = EmailMessage(policy=email.policy.default)
    for name, value in fields:
        mail.set_raw(name, value.rstrip("\r\n"))
    return mail


def _split_header(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Header, the blank line after it, body; ("", "", "") when the header never ends, is
    empty (then the first line is the blank one, which the search below would not find), or
    holds a bare CR."""
    end = HEADER_END.search(data)
    if end is None or data.startswith((b"\n", b"\r\n")):
        return b"", b"", b""
    head = data[: end.end()]
    if head.count(b"\r") != head.count(b"\r\n"):
        return b"", b"", b""  # the email package ends a line at a bare CR too
    return data[: end.start()], data[end.start() : end.end()], data[end.end() :]


def _from_mail(
    mail: EmailMessage, sender: str, envelope: list[str], data: bytes, extra: dict[str, Any]
) -> InternalMessage:
    fields = _fields(mail)
    author = _addresses(fields, "from")
    if not sender:
        sender = author[0].address if author else ""
    # The author's display name, when the author is the one the reports go to.
    name = next((a.display_name for a in author if a.address.casefold() == sender.casefold()), "")
    recipients = [Recipient(a, kind) for kind in ("to", "cc") for a in _addresses(fields, kind)]
    named = {r.address.address.casefold() for r in recipients}
    recipients += [Recipient(Address(r), "bcc") for r in envelope if r.casefold() not in named]
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    return InternalMessage(
        message_id=_first(fields, "message-id").strip()
        or email.utils.make_msgid(domain="mailwright.invalid"),
        sender=Address(sender, name),
        recipients=tuple(recipients),
        subject=_unstructured(fields, "subject"),
        submit_time=_date(_first(fields, "date")),
        body_text=_text(text) if isinstance(text, EmailMessage) else "",
        body_html=_text(html) if isinstance(html, EmailMessage) else None,
        attachments=tuple(_attachment(part) for part in mail.iter_attachments()),
        importance=_importance(fields),
        rfc5322=data,
        extra=extra,
    )


def _fields(mail: EmailMessage) -> dict[str, list[str]]:
    """The header fields as they came, unfolded (RFC 5322 §2.2.3), by lower-case name.

    Read raw rather than through the email package's header objects: those cost more than the
    whole parse (the IMS converts every message it takes), and their address parser puts a
    blank between adjacent encoded words of a display name (RFC 2047 §6.2 joins them)."""
    fields: dict[str, list[str]] = {}
    for field, value in mail.raw_items():
        fields.setdefault(field.lower(), []).append("".join(str(value).splitlines()))
    return fields


def _first(fields: dict[str, list[str]], field: str) -> str:
    return fields.get(field, [""])[0]


def _unstructured(fields: dict[str, list[str]], field: str) -> str:
    value = _first(fields, field)
    if "=?" in value or not value.isascii():
        return str(email.policy.default.header_factory(field, value))  # RFC 2047 decoding
    return value


def _addresses(fields: dict[str, list[str]], field: str) -> list[Address]:
    values = fields.get(field, [])
    if len(values) == 1 and (plain := _PLAIN_MAILBOX.fullmatch(values[0])):
        name, address = " ".join((plain[1] or "").split()), plain[2] or plain[3]
        return [Address(address, _decoded(name))]
    return [
        Address(address, _decoded(name))
        for name, address in email.utils.getaddresses(values)
        if "@" in address
    ]


def _decoded(phrase: str) -> str:
    """A display name with its RFC 2047 encoded words decoded."""
    if "=?" not in phrase:
        return phrase
    try:
        return str(email.header.make_header(email.header.decode_header(phrase)))
    except _PARSE_ERRORS:
        return phrase


def _date(value: str) -> datetime.datetime:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return datetime.datetime.now(datetime.UTC)
    # RFC 5322 §3.3: -0000 says the local time zone is unknown; the time is still UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def _text(part: EmailMessage) -> str:
    # The internal format keeps line ends as \n, as the client that composed the message did.
    return str(part.get_content()).replace("\r\n", "\n")


def _attachment(part: EmailMessage) -> Attachment:
    if part.get_content_maintype() == "message":
        inner = part.get_payload(0)
        data = inner.as_bytes() if isinstance(inner, EmailMessage) else b""
    elif part.is_multipart():
        data = part.as_bytes()
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
    return Attachment(_filename(part), part.get_content_type(), data)


def _filename(part: EmailMessage) -> str:
    """The attachment's name, as the parsed header's parameters hold it. get_filename() would
    unquote a second time: a name like `<x>` lost its brackets (email.utils.unquote)."""
    for header, parameter in (("content-disposition", "filename"), ("content-type", "name")):
        value = getattr(part[header], "params", {}).get(parameter)
        if value is not None:
            return str(value)
    return ""


def _importance(fields: dict[str, list[str]]) -> str:
    """Importance (RFC 2156), else X-Priority: 1-2 high, 4-5 low."""
    importance = _first(fields, "importance").strip().lower()
    if importance in IMPORTANCE:
        return importance
    priority = _first(fields, "x-priority").strip()[:1]
    return {"1": "high", "2": "high", "4": "low", "5": "low"}.get(priority, "normal")
