"""DATA read in blocks gives what reading it line by line, as aiosmtpd does, gives: the same
content, the same refusal, and the same bytes left for the commands after it."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwright.runtime.ims.smtpdata import TOO_LONG, TOO_MUCH, DataRefusedError, read_data

LINE_LIMIT = 24
AFTER = b"QUIT\r\n"  # what a pipelining client sent after the content


def line_by_line(stream: bytes, size_limit: int) -> tuple[set[str] | bytes, bytes]:
    """RFC 5321 §4.5.2 as aiosmtpd's smtp_DATA reads it: (the content or the possible
    refusals, the bytes after the end line)."""
    lines, position = [], 0
    while (line := stream[position : stream.index(b"\r\n", position) + 2]) != b".\r\n":
        lines.append(line)
        position += len(line)
    rest = stream[position + 3 :]
    refusals = set()
    if size_limit and sum(map(len, lines)) > size_limit:  # 0: no limit, as in aiosmtpd
        refusals.add(TOO_MUCH)
    if any(len(line) > LINE_LIMIT for line in lines):
        refusals.add(TOO_LONG)
    if refusals:
        return refusals, rest
    return b"".join(line[1:] if line.startswith(b".") else line for line in lines), rest


async def in_blocks(pieces: list[bytes], size_limit: int) -> tuple[str | bytes, bytes]:
    reader = asyncio.StreamReader(limit=LINE_LIMIT)

    async def feed() -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)

    feeding = asyncio.get_running_loop().create_task(feed())
    try:
        outcome: str | bytes = await read_data(reader, size_limit, LINE_LIMIT)
    except DataRefusedError as refused:
        outcome = refused.reply
    await feeding
    return outcome, bytes(reader._buffer)  # type: ignore[attr-defined]


# Lines of dots, CRs, LFs and text: lone dots, stuffed dots, bare CRs and LFs, long lines.
_LINES = st.lists(st.text(".x\r\n", max_size=40).map(str.encode), max_size=12)


@settings(max_examples=400, deadline=None)
@given(_LINES, st.lists(st.integers(1, 30), max_size=20), st.integers(0, 200))
def test_blocks_read_as_lines_do(lines: list[bytes], cuts: list[int], size_limit: int) -> None:
    stream = b"".join(line + b"\r\n" for line in lines) + b".\r\n" + AFTER
    pieces, position = [], 0
    for cut in cuts:
        pieces.append(stream[position : position + cut])
        position += cut
    pieces.append(stream[position:])
    expected, rest = line_by_line(stream, size_limit)
    outcome, left = asyncio.run(in_blocks([p for p in pieces if p], size_limit))
    assert left == rest
    if isinstance(expected, set):
        assert outcome in expected
    else:
        assert outcome == expected


def test_a_connection_closed_during_data_is_a_reset() -> None:
    async def closed() -> None:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        reader.feed_data(b"Subject: cut\r\n\r\nhalf a mess")
        reader.feed_eof()
        await read_data(reader, 1000, LINE_LIMIT)

    with pytest.raises(ConnectionResetError):
        asyncio.run(closed())
