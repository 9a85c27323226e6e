"""The content of SMTP's DATA command (RFC 5321 §4.1.1.4), read in blocks instead of lines.

aiosmtpd reads DATA one line per `readuntil`, a coroutine round and a log call for each of a
message's lines: for a 2 KiB message that was a seventh of a do-nothing server's CPU. This
reads whatever the stream has buffered at once and finds the end with bytes.find. What it
accepts and refuses is aiosmtpd's: the content ends at a line that is a lone "." (a line ends
with CRLF; a bare LF does not end one), a leading "." of a line is removed (§4.5.2), and a
message over the size limit (552) or with a line over the line limit (500, §4.5.3.1.6) is
refused only once its end has been read, so the client and server stay in step.

It works on the stream's buffer directly, through asyncio.StreamReader's private attributes
(`_buffer`, `_limit`, `_eof`, `_exception`, `_wait_for_data`, `_maybe_resume_transport`),
which are the same from Python 3.8 to 3.13.
"""

from __future__ import annotations

import asyncio
from typing import Any

END = b"\r\n.\r\n"  # the CRLF ending the last line, then the lone dot's line
# While DATA is read, the stream pauses its transport only past twice this many buffered
# bytes (asyncio's own limit for aiosmtpd is its 1001-octet line, so it paused every 2 KiB).
BLOCK = 1 << 16


class DataRefusedError(Exception):
    """The content was read to its end and refused: `reply` is aiosmtpd's own reply."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


TOO_MUCH = "552 Error: Too much mail data"
TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"


async def read_data(reader: asyncio.StreamReader, size_limit: int | None, line_limit: int) -> bytes:
    """The content up to the lone "." line, that line consumed and the dots unstuffed; raises
    DataRefusedError for a message over `size_limit` octets or with a line over `line_limit`."""
    stream: Any = reader  # its private buffer, as the module says
    saved, stream._limit = stream._limit, max(stream._limit, BLOCK)
    try:
        blocks, total, too_long = await _blocks(stream, size_limit, line_limit)
    finally:
        stream._limit = saved
        stream._maybe_resume_transport()
    if size_limit and total > size_limit:
        raise DataRefusedError(TOO_MUCH)
    content = b"".join(blocks)
    if too_long or max(map(len, content.split(b"\r\n"))) + 2 > line_limit:
        raise DataRefusedError(TOO_LONG)
    if content.startswith(b"."):
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n")


async def _blocks(
    stream: Any, size_limit: int | None, line_limit: int
) -> tuple[list[bytes], int, bool]:
    """The content's blocks as they arrive (none kept once over the size limit), its size, and
    whether a line too long to keep was dropped."""
    buffer: bytearray = stream._buffer
    while len(buffer) < 3:  # the shortest content: the end line alone
        await _more(stream)
    if buffer.startswith(b".\r\n"):
        del buffer[:3]
        return [], 0, False
    blocks: list[bytes] = []
    total, too_long = 0, False
    while True:
        end = buffer.find(END)
        # Up to the end; else up to the last CRLF, kept for the END that may begin with it.
        taken = end + 2 if end >= 0 else max(buffer.rfind(b"\r\n"), 0)
        if end < 0 and taken == 0 and len(buffer) > line_limit:
            taken, too_long = len(buffer) - 1, True  # one line too long: dropped as it comes
            blocks = []
        total += taken
        if size_limit and total > size_limit:
            blocks = []
        elif taken and not too_long:
            blocks.append(bytes(buffer[:taken]))
        del buffer[: end + len(END) if end >= 0 else taken]
        if end >= 0:
            return blocks, total, too_long
        await _more(stream)


async def _more(stream: Any) -> None:
    if stream._exception is not None:
        raise stream._exception
    if stream._eof:  # aiosmtpd closes its side on this, as for a reset
        raise ConnectionResetError("the client closed the connection during DATA")
    await stream._wait_for_data("read_data")
