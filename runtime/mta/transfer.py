"""The internal transfer protocol between MTAs of an organization, and client submission.

Inside an organization messages travel in the internal format over a small framed protocol on
the MTA transfer port (lines end in CRLF; replies carry SMTP-style codes, RFC 3463 statuses):

    XFER <octets>\r\n<CBOR: {"message": internal bytes, "rcpt": [[type, address, name]...],
                             "from": server}>      ->  250 2.0.0 queued <id>
    SUBMIT <octets>\r\n<CBOR: {"user", "password", "message", "rcpt"}>
                                                    ->  250 2.0.0 <message-id>
    MOVE <octets>\r\n<CBOR: {"alias", "messages": [[folder, file name, bytes]...],
                             "delivered": [uid...], "from": server}>
                                                    ->  250 2.0.0 <n> taken
    QUIT                                            ->  221 2.0.0 bye

A 250 is sent only after the message is in the receiver's durable queue (MOVE: its store).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2

from mailwright.runtime.formats.message import Address

MAX_FRAME = 64 * 1024 * 1024
TIMEOUT = 30.0

Handler = Callable[[str, dict[str, Any], str], Awaitable[str]]
VERBS = ("XFER", "SUBMIT", "MOVE")


class TransferError(Exception):
    """A hand-off that did not happen; `temporary` says whether to try again later."""

    def __init__(self, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


def recipients_payload(recipients: list[Address]) -> list[list[str]]:
    return [[r.type, r.address, r.display_name] for r in recipients]


def recipients_from(payload: list[list[str]]) -> list[Address]:
    return [Address(address, name, kind) for kind, address, name in payload]


async def serve(handler: Handler, host: str, port: int) -> asyncio.Server:
    """`handler(verb, document, peer)` returns the reply line for one frame."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername", ("?",))[0])
        try:
            while line := await asyncio.wait_for(reader.readline(), TIMEOUT * 10):
                reply = await _answer(handler, reader, line, peer)
                writer.write(reply.encode() + b"\r\n")
                await writer.drain()
                if reply.startswith("221"):
                    break
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(session, host, port)


async def _answer(handler: Handler, reader: asyncio.StreamReader, line: bytes, peer: str) -> str:
    verb, _, size = line.decode("latin-1").strip().partition(" ")
    verb = verb.upper()
    if verb == "QUIT":
        return "221 2.0.0 bye"
    if verb not in VERBS or not size.isdigit():
        return "500 5.5.1 unknown command"
    if int(size) > MAX_FRAME:
        return "552 5.3.4 message too big"
    data = await asyncio.wait_for(reader.readexactly(int(size)), TIMEOUT)
    try:
        document = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError):
        return "554 5.6.0 malformed frame"
    if not isinstance(document, dict):
        return "554 5.6.0 malformed frame"
    return await handler(verb, document, peer)


async def send_frame(host: str, port: int, verb: str, document: dict[str, Any]) -> str:
    """One frame, one reply line; raises TransferError unless the reply is 2xx."""
    data = cbor2.dumps(document)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise TransferError(f"cannot connect to {host}:{port}: {exc}") from None
    try:
        writer.write(f"{verb} {len(data)}\r\n".encode() + data)
        await writer.drain()
        reply = (await asyncio.wait_for(reader.readline(), TIMEOUT)).decode("latin-1").strip()
        writer.write(b"QUIT\r\n")
        await writer.drain()
    except (OSError, TimeoutError) as exc:
        raise TransferError(f"{host}:{port} dropped the connection: {exc}") from None
    finally:
        writer.close()
    if not reply.startswith("2"):
        raise TransferError(reply or "no reply", temporary=not reply.startswith("5"))
    return reply


Endpoint = Callable[[str], tuple[str, int] | None]


def endpoints_in(state: Path) -> Endpoint:
    """Where a server's MTA listens: the `endpoints.json` its host process wrote when ready."""

    def lookup(server: str) -> tuple[str, int] | None:
        try:
            endpoints = json.loads((state / "hosts" / server / "endpoints.json").read_text())
            host, _, port = endpoints["transfer"].rpartition(":")
            return host, int(port)
        except (OSError, ValueError, KeyError):
            return None

    return lookup
