"""The seam between `apply` and the runtime.

`apply` hands over the runtime actions its plan implies (host started, restarted, reloaded,
stopped) with the folder of the newly applied artifacts. Until the supervisor exists this seam
records them, one JSON line each, in `<state>/runtime/actions.jsonl`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostAction:
    host: str  # "<org>/<server>"
    action: str  # start, restart, reload, stop
    reason: str


def launch(state_dir: Path, artifacts: Path, serial: int, actions: Sequence[HostAction]) -> None:
    log = state_dir / "runtime" / "actions.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        for action in actions:
            record = {
                "serial": serial,
                "host": action.host,
                "action": action.action,
                "reason": action.reason,
                "artifacts": str(artifacts),
            }
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
