"""Faults in the lab: Hermes's cable pulled during a burst (then plugged back), Arlington killed
and restarted by the supervisor. Every message Athena acknowledged reaches Mark exactly once,
and Hermes's IMS retries on the schedule the spec gives it (shortened here to 2 seconds).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwright.runtime.lab import Lab
from tests.helpers import SEED_DIR, wait_until
from tests.lab.conftest import applied_in_the_lab, require_lab

BURST = 40
RETRY = 2  # seconds: Hermes's IMS retry interval in this test's spec
# Jane's burst, run inside athena's namespace: each acknowledged message id on a line.
SENDER = """\
import sys
from pathlib import Path
from mailwright.runtime.submit import Submission, submit
state, count = Path(sys.argv[1]), int(sys.argv[2])
for n in range(count):
    body = f"message {n} of the burst"
    mail = Submission("jane@dcnw.com", "demo-jane", ["mark@minasi.com"], [], f"burst {n}", body)
    while True:
        try:
            print(submit(state, mail), flush=True)
            break
        except Exception as exc:  # athena's MTA refused or was out of reach: send it again
            print(f"retry {exc}", file=sys.stderr, flush=True)
"""


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Lab]]:
    require_lab()
    root = tmp_path_factory.mktemp("faults")
    specs = [root / "dcnw.yaml", root / "minasi.yaml"]
    dcnw = (SEED_DIR / "dcnw.yaml").read_text(encoding="utf-8")
    relay = "          relay:\n            networks: [10.1.0.0/24]\n"
    assert relay in dcnw
    retry = f"          retry: {{intervals: [{RETRY}], give_up: 1h}}\n"
    specs[0].write_text(dcnw.replace(relay, relay + retry), encoding="utf-8")
    specs[1].write_text((SEED_DIR / "minasi.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    state = root / "state"
    with applied_in_the_lab(specs, state) as lab:
        yield state, lab


def _events(state: Path, server: str) -> list[dict[str, Any]]:
    log = state / "hosts" / server / "tracking.jsonl"
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def _stored(state: Path) -> list[str]:
    """Mark's messages by Message-ID, one per stored file."""
    maildir = state / "hosts" / "arlington" / "store" / "mark" / "Maildir"
    ids = []
    for path in (p for sub in ("new", "cur") for p in (maildir / sub).glob("*")):
        for line in path.read_bytes().splitlines():
            if line.lower().startswith(b"message-id:"):
                ids.append(line.split(b":", 1)[1].strip().decode())
                break
    return ids


def _host_pid(state: Path, host: str) -> int:
    status = json.loads((state / "runtime" / "status.json").read_text(encoding="utf-8"))
    pid = status["hosts"][host]["pid"]
    assert isinstance(pid, int)
    return pid


def test_every_acknowledged_message_arrives_once_through_a_cut_and_a_kill(
    seed: tuple[Path, Lab], tmp_path: Path
) -> None:
    state, lab = seed
    script = tmp_path / "burst.py"
    script.write_text(SENDER, encoding="utf-8")
    sent: list[str] = []

    def burst() -> None:
        done = lab.run("athena", [sys.executable, str(script), str(state), str(BURST)], timeout=180)
        sent.extend(done.stdout.split())

    sender = threading.Thread(target=burst)
    sender.start()
    time.sleep(1.0)
    lab.set_link("hermes", up=False)  # Hermes's cable pulled mid-burst
    time.sleep(RETRY * 2)
    lab.set_link("hermes", up=True)
    arlington = _host_pid(state, "Minasi/arlington")
    os.kill(arlington, signal.SIGKILL)  # the supervisor starts another
    sender.join(200)
    assert len(sent) == BURST
    wait_until(lambda: set(sent) <= set(_stored(state)), 90, "every message in Mark's store")
    stored = _stored(state)
    assert sorted(stored) == sorted(sent)  # each exactly once, nothing else
    assert _host_pid(state, "Minasi/arlington") != arlington
    # Hermes's IMS tried again no sooner than its schedule says.
    hermes = _events(state, "hermes")
    deferred = [e for e in hermes if e["event"] == "deferred"]
    cut = [e for e in _events(state, "athena") + hermes if e["event"] == "deferred"]
    assert cut, "neither the cut nor the kill held any message back"
    for event in deferred:
        later = [
            e
            for e in hermes
            if e["message_id"] == event["message_id"]
            and e["event"] in ("delivered", "deferred")
            and e["time"] > event["time"]
        ]
        if later:
            gap = _seconds(later[0]["time"]) - _seconds(event["time"])
            assert gap >= RETRY - 0.1, (event, later[0])


def _seconds(stamp: str) -> float:
    from datetime import datetime  # noqa: PLC0415

    return datetime.fromisoformat(stamp).timestamp()
