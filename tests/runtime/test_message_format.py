"""The internal format round-trips, reads its v1 fixture, and renders as MIME or UUENCODE."""

from __future__ import annotations

import binascii
import datetime
import email
import email.policy
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwright.runtime.formats.message import (
    Address,
    Attachment,
    Hop,
    InternalMessage,
    MessageFormatError,
    Recipient,
    decode,
    encode,
)
from mailwright.runtime.formats.render import imcea, to_rfc5322
from tests.helpers import GOLDEN

FIXTURE = GOLDEN / "internal-message-v1.cbor"
WHEN = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def sample() -> InternalMessage:
    return InternalMessage(
        message_id="<1.athena@dcnw.com>",
        sender=Address("jane@dcnw.com", "Jane Doe"),
        recipients=(
            Recipient(Address("mark@minasi.com", "Mark Minasi")),
            Recipient(Address("pat@dcnw.com", "Pat Quinn"), "cc"),
        ),
        subject="Exchange and POP3 — ça marche",
        submit_time=WHEN,
        body_text="Hello Mark,\n.a line with a dot\nJane\n",
        body_html="<p>Hello Mark</p>",
        attachments=(Attachment("notes.txt", "text/plain", b"line 1\nline 2\n"),),
        importance="high",
        hops=(Hop("athena", WHEN),),
    )


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_encode_decode_is_the_identity() -> None:
    assert decode(encode(sample())) == sample()


def test_the_v1_fixture_still_decodes() -> None:
    # Written by format version 1 and kept as it is: every later runtime must read it.
    assert decode(FIXTURE.read_bytes()) == sample()


def test_garbage_is_a_format_error() -> None:
    with pytest.raises(MessageFormatError):
        decode(b"\xff\x00 not cbor")
    with pytest.raises(MessageFormatError):
        decode(encode(sample()).replace(b"av\x01", b"av\x09"))


def test_mime_rendering_keeps_every_property() -> None:
    mail = parse(to_rfc5322(sample()))
    assert mail["Message-ID"] == "<1.athena@dcnw.com>"
    assert mail["Subject"] == "Exchange and POP3 — ça marche"
    assert mail["From"] == "Jane Doe <jane@dcnw.com>"
    assert mail["To"] == "Mark Minasi <mark@minasi.com>"
    assert mail["Cc"] == "Pat Quinn <pat@dcnw.com>"
    assert mail["Importance"] == "high"
    body = mail.get_body(("plain",))
    assert body is not None and body.get_content().replace("\r\n", "\n") == sample().body_text
    html = mail.get_body(("html",))
    assert html is not None and "Hello Mark" in html.get_content()
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_filename() == "notes.txt"
    assert attachment.get_content().replace("\r\n", "\n") == "line 1\nline 2\n"


def test_uuencode_rendering_in_a_character_set() -> None:
    data = to_rfc5322(sample(), uuencoded=True, charset="iso-8859-1")
    mail = parse(data)
    assert not mail.is_multipart()
    assert mail.get_content_charset() == "iso-8859-1"
    text = mail.get_content().replace("\r\n", "\n")
    begin = text.index("begin 644 notes.txt\n")
    lines = text[begin:].splitlines()[1:]
    decoded = b"".join(binascii.a2b_uu(line) for line in lines[: lines.index("`")])
    assert decoded == b"line 1\nline 2\n"


def test_a_charset_that_cannot_carry_the_text_falls_back_to_utf8() -> None:
    message = InternalMessage("<2@x>", Address("a@b.org"), (), "hi", WHEN, body_text="日本語\n")
    assert parse(to_rfc5322(message, charset="iso-8859-1")).get_content_charset() == "utf-8"


def test_an_internet_message_is_served_as_it_arrived() -> None:
    raw = b"Received: from x\r\nSubject: as is\r\n\r\nbody\r\n"
    message = InternalMessage("<3@x>", Address("a@b.org"), (), "as is", WHEN, rfc5322=raw)
    assert to_rfc5322(message, uuencoded=True) == raw


def test_non_smtp_addresses_are_encapsulated() -> None:
    x400 = Address("c=US;a= ;p=DCNW;o=HQ;s=Doe;", "Jane", "X400")
    assert imcea(x400, "dcnw.com") == "IMCEAX400-c=US+3Ba=+20+3Bp=DCNW+3Bo=HQ+3Bs=Doe+3B@dcnw.com"


@given(
    subject=st.text(alphabet=st.characters(codec="utf-8"), max_size=60),
    body=st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    data=st.binary(max_size=300),
)
def test_round_trip_through_cbor_keeps_any_content(subject: str, body: str, data: bytes) -> None:
    message = InternalMessage(
        "<p@x>",
        Address("a@b.org"),
        (Recipient(Address("c@d.org")),),
        subject,
        WHEN,
        body_text=body,
        attachments=(Attachment("f.bin", "application/octet-stream", data),),
    )
    assert decode(encode(message)) == message
