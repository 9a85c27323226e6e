"""The tracking log: one JSON line an event; the events of one turn of the event loop are
written together when it turns, and at once where no loop runs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from mailwright.runtime.mta.tracking import TrackingLog, track


def _events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def test_the_events_of_a_turn_are_written_when_the_loop_turns(tmp_path: Path) -> None:
    path = tmp_path / "hosts" / "arlington" / "tracking.jsonl"
    log = TrackingLog(path, "arlington")

    async def turn() -> list[str]:
        for event in ("received", "converted", "routed"):
            log.event(event, "<1@example.org>")
        written = _events(path)
        await asyncio.sleep(0)  # the loop turns
        return written

    assert asyncio.run(turn()) == []
    assert _events(path) == ["received", "converted", "routed"]
    log.event("delivered", "<1@example.org>", mailbox="mark")  # no loop: at once
    assert [e["event"] for e in track(tmp_path, "<1@example.org>")][-1] == "delivered"
