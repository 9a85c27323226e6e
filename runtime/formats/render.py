"""Internal messages as RFC 5322 text: MIME (RFC 2045-2049) or UUENCODE, in a character set.

The store uses it for messages created inside the organization, as the mailbox's POP3 settings
say; the IMS uses it towards the internet, as the connector's per-domain format says.
"""

from __future__ import annotations

import binascii
import email.header
import email.policy
import email.utils
import re
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage

from mailwright.runtime.formats.message import Address, InternalMessage

# RFC 2156 / common practice: Importance and X-Priority for the MAPI importance property.
_PRIORITY = {"high": "1 (Highest)", "normal": "3 (Normal)", "low": "5 (Lowest)"}
_UU_LINE = 45  # bytes per uuencoded line
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # RFC 5322 §3.2.3
# Header fields the message has set with set_raw are written as they are, not refolded.
_AS_WRITTEN = email.policy.SMTP.clone(refold_source="none")


def imcea(address: Address, domain: str) -> str:
    """Exchange's encapsulation of a non-SMTP address in an SMTP one:
    IMCEA<type>-<address, with characters outside atext as +XX>@<domain>."""
    encoded = "".join(
        c if c.isalnum() or c in "-_.=" else f"+{ord(c):02X}" for c in address.address
    )
    return f"IMCEA{address.type}-{encoded}@{domain}"


def _header_address(address: Address) -> str:
    """One mailbox as header text: the name as it is when it is plain words, quoted when it has
    specials or runs of blanks (RFC 5322 §3.2.4), encoded words otherwise (RFC 2047 §5)."""
    addr_spec = address.address if address.type == "SMTP" else imcea(address, "invalid")
    checked = HeaderAddress(address.display_name, addr_spec=addr_spec)  # refuses a bad address
    name, addr_spec = checked.display_name, checked.addr_spec
    if any(c in name + addr_spec for c in "\r\n"):
        raise ValueError(f"a line break in the address {addr_spec!r}")
    if not name:
        return addr_spec
    if not name.isascii() or "=?" in name or not name.isprintable():
        encoded = email.header.Header(name, "utf-8").encode(linesep="\n")
        return f"{encoded} <{addr_spec}>"
    if _SPECIALS.search(name) or name != " ".join(name.split()):
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}" <{addr_spec}>'
    return f"{name} <{addr_spec}>"


def _address_field(mail: EmailMessage, field: str, addresses: list[str]) -> None:
    # Folded after the commas (RFC 5322 §2.2.3) and kept as written: Python before 3.11.9
    # encodes the separating comma when it refolds a list with an encoded name (gh-100884).
    mail.set_raw(field, ",\n ".join(addresses))


def _charset(text: str, charset: str) -> str:
    """The mailbox's character set when it can carry the text, else UTF-8."""
    try:
        text.encode(charset)
    except (UnicodeEncodeError, LookupError):
        return "utf-8"
    return charset


def uuencode(filename: str, data: bytes) -> str:
    lines = [f"begin 644 {filename}"]
    lines += [
        binascii.b2a_uu(data[i : i + _UU_LINE], backtick=True).decode("ascii").rstrip("\n")
        for i in range(0, len(data), _UU_LINE)
    ]
    lines += ["`", "end"]
    return "\n".join(lines)


def to_rfc5322(
    message: InternalMessage, *, uuencoded: bool = False, charset: str = "utf-8"
) -> bytes:
    """The message as RFC 5322 bytes (CRLF line ends); an internet message as it arrived."""
    if message.rfc5322 is not None:
        return message.rfc5322
    mail = EmailMessage(policy=email.policy.SMTP)
    mail["Message-ID"] = message.message_id
    mail["Date"] = email.utils.format_datetime(message.submit_time)
    _address_field(mail, "From", [_header_address(message.sender)])
    for kind, header in (("to", "To"), ("cc", "Cc")):
        addresses = [_header_address(r.address) for r in message.recipients if r.kind == kind]
        if addresses:
            _address_field(mail, header, addresses)
    mail["Subject"] = message.subject
    if message.importance != "normal":
        mail["Importance"] = message.importance
        mail["X-Priority"] = _PRIORITY[message.importance]
    if uuencoded:
        _uuencoded_body(mail, message, charset)
    else:
        _mime_body(mail, message, charset)
    return mail.as_bytes(policy=_AS_WRITTEN)


def _mime_body(mail: EmailMessage, message: InternalMessage, charset: str) -> None:
    mail.set_content(message.body_text, charset=_charset(message.body_text, charset))
    if message.body_html is not None:
        mail.add_alternative(
            message.body_html, subtype="html", charset=_charset(message.body_html, charset)
        )
    for attachment in message.attachments:
        maintype, _, subtype = attachment.mime_type.partition("/")
        mail.add_attachment(
            attachment.data,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )


def _uuencoded_body(mail: EmailMessage, message: InternalMessage, charset: str) -> None:
    """One text/plain part; attachments follow the text as uuencoded blocks, as pre-MIME mail
    readers expect (and Exchange's UUENCODE setting sends)."""
    blocks = [message.body_text.rstrip("\n")]
    blocks += [uuencode(a.filename, a.data) for a in message.attachments]
    text = "\n\n".join(blocks) + "\n"
    mail.set_content(text, charset=_charset(text, charset))
