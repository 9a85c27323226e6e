"""Message tracking, as Exchange administrators use it: every host appends one JSON line per
event (submitted, received, routed, transferred, delivered, deferred, ndr, converted) to its
`tracking.jsonl`; `mailwright track` gathers a message's path across hosts."""

from __future__ import annotations

import asyncio
import atexit
import datetime
import json
import os
from pathlib import Path
from typing import Any

import orjson


class TrackingLog:
    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.host = host
        path.parent.mkdir(parents=True, exist_ok=True)
        # Opened once (an open per event cost more than the event): O_APPEND makes each write
        # land whole at the end of the file, even with several writers (the IMS workers).
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._lines: list[bytes] = []
        atexit.register(self.flush)

    def event(self, event: str, message_id: str, **details: str | list[str]) -> None:
        """Logged when the event loop next turns (at once without one): the events of one
        turn, often several messages' under load, in one write. Tracking is a log, not mail:
        a process killed at that moment loses those lines, never a message."""
        record = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds"),
            "host": self.host,
            "event": event,
            "message_id": message_id,
            **details,
        }
        self._lines.append(orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n")
        if len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no event loop in this thread
                self.flush()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            os.write(self._fd, b"".join(lines))


def track(state_dir: Path, message_id: str) -> list[dict[str, Any]]:
    """Every event of one message on every host of the state directory, in time order."""
    events = []
    for log in sorted(state_dir.glob("hosts/*/tracking.jsonl")):
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if record.get("message_id") == message_id:
                events.append(record)
    return sorted(events, key=lambda r: (r["time"], r["host"]))
