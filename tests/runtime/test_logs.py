"""The runtime's log lines: one a record, with the peer and message id of what it is about."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest

from mailwright.runtime import logs
from mailwright.runtime.mta import transfer


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """logs.setup replaces the root logger's handlers: the test's are put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.mark.usefixtures("root_handlers")
def test_a_line_ends_with_its_peer_and_message_id_before_any_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.setup("host athena")
    log = logging.getLogger("mailwright.test")
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        log.exception("delivery failed", extra={"peer": "10.1.0.20", "message_id": "<m@x>"})
    log.info("plain")
    first, *rest = capsys.readouterr().err.splitlines()
    assert first.endswith(
        " host athena ERROR mailwright.test: delivery failed [peer=10.1.0.20 message_id=<m@x>]"
    )
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-2] == "OSError: [Errno 28] No space left on device"
    assert rest[-1].endswith(" host athena INFO mailwright.test: plain")


def test_a_handler_that_fails_gets_451_and_a_log_line_not_a_traceback_on_the_wire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(verb: str, document: dict[str, Any], peer: str, certificate: str) -> str:
        raise RuntimeError("the disk went away")

    async def exchange() -> bytes:
        server = await transfer.serve(broken, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        frame = cbor2.dumps({"message": b"", "rcpt": []})
        writer.write(f"XFER {len(frame)}\r\n".encode() + frame)
        reply = await reader.readline()
        writer.write(b"QUIT\r\n")
        assert await reader.readline() == b"221 2.0.0 bye\r\n"
        writer.close()
        server.close()
        await server.wait_closed()
        return reply

    with caplog.at_level(logging.ERROR, logger="mailwright.transfer"):
        reply = asyncio.run(exchange())
    assert reply == b"451 4.3.0 local error in processing; try again later\r\n"
    [record] = [r for r in caplog.records if r.name == "mailwright.transfer"]
    assert record.getMessage() == "XFER frame failed"
    assert getattr(record, "peer", None) == "127.0.0.1"
    assert record.exc_info is not None and "the disk went away" in str(record.exc_info[1])
