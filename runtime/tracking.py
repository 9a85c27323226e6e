"""Message tracking, as Exchange administrators use it: every host appends one JSON line per
event (submitted, received, routed, transferred, delivered, deferred, ndr, converted) to its
`tracking.jsonl`; `mailwright track` gathers a message's path across hosts."""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path
from typing import Any


class TrackingLog:
    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.host = host
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def event(self, event: str, message_id: str, **details: str) -> None:
        record = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds"),
            "host": self.host,
            "event": event,
            "message_id": message_id,
            **details,
        }
        with self._lock, open(self.path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record, sort_keys=True) + "\n")


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
