"""A blocking SMTP client transaction (smtplib), run in the outbound's threads."""

from __future__ import annotations

import smtplib
import ssl


def smtp_send(
    endpoint: tuple[str, int],
    origin: tuple[str, str],
    sender: str,
    recipients: list[str],
    data: bytes,
) -> dict[str, str]:
    """One SMTP transaction from `origin` (this host's loopback address and its HELO name):
    each recipient's final reply, as `<code> <text>`."""
    source, helo = origin
    replies: dict[str, str] = {}
    try:
        with smtplib.SMTP(
            endpoint[0], endpoint[1], local_hostname=helo, timeout=30, source_address=(source, 0)
        ) as client:
            _hello(client)
            _transaction(client, sender, recipients, data, replies)
    except smtplib.SMTPResponseException as exc:
        failure = _reply(exc.smtp_code, exc.smtp_error)
    except (OSError, smtplib.SMTPException) as exc:
        failure = f"4.4.2 {exc}"
    else:
        return replies
    # Whoever has no final reply yet shares the session's failure (a QUIT that went wrong
    # after the DATA reply changes nothing: every recipient has its reply by then).
    return {r: replies.get(r, failure) for r in recipients}


def _hello(client: smtplib.SMTP) -> None:
    client.ehlo()
    if client.has_extn("starttls"):
        # Opportunistic TLS (RFC 3207); the certificate is not required to verify.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo()


def _transaction(
    client: smtplib.SMTP, sender: str, recipients: list[str], data: bytes, replies: dict[str, str]
) -> None:
    """RFC 5321 §3.3: one MAIL, a RCPT per recipient, one DATA for those the server took.
    A recipient's reply goes into `replies` as soon as it is final: a refused RCPT at once,
    an accepted one with the reply to the message."""
    options = [f"SIZE={len(data)}"] if client.has_extn("size") else []
    code, text = client.mail(sender, options)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, text, sender)
    accepted = []
    for recipient in recipients:
        code, text = client.rcpt(recipient)
        if code in (250, 251):
            accepted.append(recipient)
            continue
        replies[recipient] = _reply(code, text)
        if code == 421:  # RFC 5321 §3.8: the server is closing; the rest share its reply
            raise smtplib.SMTPResponseException(code, text)
    if not accepted:  # RFC 5321 §3.3: no DATA when no recipient was accepted
        client.rset()
        return
    try:
        reply = _reply(*client.data(data))
    except smtplib.SMTPDataError as exc:  # DATA itself refused, before the message
        reply = _reply(exc.smtp_code, exc.smtp_error)
    replies.update(dict.fromkeys(accepted, reply))


def _reply(code: int, text: bytes | str) -> str:
    return f"{code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"
