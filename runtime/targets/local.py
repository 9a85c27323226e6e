"""The local target: a supervisor process on this machine (runtime/supervisor/) runs every host,
on a loopback address of its own (`local`) or in a network namespace of the lab at its spec
address (`netns`, runtime/targets/netns.py).

`launch` records the runtime actions of an applied serial, one JSON line each, in
`<state>/runtime/actions.jsonl`, starts the supervisor if none runs (or has it look again),
and waits until every host runs the new serial and answers. The supervisor decides restart or
reload by the same rule the plan showed (runtime/host/change.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mailwright.runtime.contract import RuntimeAction
from mailwright.runtime.lab import Lab
from mailwright.runtime.lab.netns import REGISTRY_NAME as LAB_REGISTRY
from mailwright.runtime.lab.netns import check_available
from mailwright.runtime.targets import LaunchError, Progress


def launch(
    state_dir: Path,
    artifacts: Path,
    serial: int,
    actions: Sequence[RuntimeAction],
    progress: Progress | None = None,
    *,
    runtime: str = "local",
) -> None:
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
    ensure_running(state_dir, serial, progress, runtime)


# MAILWRIGHT_RUNTIME, as shells and CI systems spell a switch.
_ON = ("on", "1", "true", "yes")
_OFF = ("off", "0", "false", "no")


def runtime_enabled() -> bool:
    """Whether `apply` runs the hosts: MAILWRIGHT_RUNTIME off writes artifacts and state only.
    A value that is neither is refused: a typo must not start live servers."""
    value = os.environ.get("MAILWRIGHT_RUNTIME", "on").strip().lower()
    if value in _ON or value in _OFF:
        return value in _ON
    raise LaunchError(
        f"MAILWRIGHT_RUNTIME={value!r} is neither on ({', '.join(_ON)}) nor off ({', '.join(_OFF)})"
    )


def ensure_running(
    state_dir: Path, serial: int, progress: Progress | None = None, runtime: str = "local"
) -> None:
    """The runtime of `serial` up and answering (unless MAILWRIGHT_RUNTIME=off)."""
    if runtime_enabled():
        start_runtime(state_dir, runtime)
        wait_until_running(state_dir, serial, progress=progress)


def wait_until_moved(
    state_dir: Path,
    stores: Sequence[tuple[str, str]],
    progress: Progress | None = None,
    patience: float = 30.0,
) -> list[str]:
    """Until the old homes' folders (server, alias) of moved or renamed mailboxes are gone,
    which their hosts remove once every message is at the new home (see mailboxmove). Gives
    up after `patience` seconds without a message moved; returns the folders still there (their
    hosts finish by themselves)."""
    if not runtime_enabled():
        return []
    folders = [state_dir / "hosts" / server / "store" / alias for server, alias in stores]
    total = remaining = _messages_in(folders)
    deadline = time.monotonic() + patience
    while (left := [f for f in folders if f.exists()]) and time.monotonic() < deadline:
        if progress is not None:
            progress(total - remaining, total)
        time.sleep(0.1)
        if (now := _messages_in(left)) < remaining:
            remaining, deadline = now, time.monotonic() + patience
    return [f"{f.parent.parent.name}/{f.name}" for f in folders if f.exists()]


def _messages_in(folders: Sequence[Path]) -> int:
    return sum(_entries(folder / "Maildir" / sub) for folder in folders for sub in ("new", "cur"))


def _entries(folder: Path) -> int:
    try:
        return len(os.listdir(folder))
    except FileNotFoundError:  # moved away, or removed meanwhile
        return 0


def supervisor_pid(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / "runtime" / "supervisor.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start_runtime(state_dir: Path, runtime: str = "local") -> None:
    """Start the supervisor in the background (it outlives the CLI), its hosts on loopback or
    in the lab's namespaces (`runtime`), or have the running one look again."""
    pid = supervisor_pid(state_dir)
    if pid is not None:
        running = running_runtime(state_dir)
        if running not in (None, runtime):
            raise LaunchError(
                f"the runtime of {state_dir} runs {running}; `mailwright down` it first"
            )
        os.kill(pid, signal.SIGHUP)
        return
    if runtime == "netns":
        check_available()  # one clear line without root or namespaces, before anything runs
    folder = state_dir / "runtime"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [
                *(sys.executable, "-m", "mailwright.runtime.supervisor"),
                *("--state", str(state_dir), "--runtime", runtime),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def running_runtime(state_dir: Path) -> str | None:
    """Where the running supervisor places its hosts ("local", "netns"); None if none runs."""
    if supervisor_pid(state_dir) is None:
        return None
    return str(status(state_dir).get("runtime", "local"))


def status(state_dir: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads((state_dir / "runtime" / "status.json").read_text())
    except (OSError, ValueError):
        return {"pid": None, "serial": None, "hosts": {}}
    document["pid"] = supervisor_pid(state_dir)
    return document


def wait_until_running(
    state_dir: Path, serial: int, timeout: float = 60.0, progress: Progress | None = None
) -> dict[str, Any]:
    """Until every host runs `serial` (started on it, or reloaded it) and answers on every
    endpoint: then the new mailboxes take mail. LaunchError after `timeout`, or at once when a
    host could not reload it or stopped."""
    deadline = time.monotonic() + timeout
    while True:
        current = status(state_dir)
        hosts = current["hosts"]
        waiting = {n: h for n, h in hosts.items() if not _runs(h, serial) or not _answers(h)}
        if progress is not None and current["serial"] == serial:
            progress(len(hosts) - len(waiting), len(hosts))
        if current["serial"] == serial and hosts and not waiting:
            return current
        if current["serial"] == serial and (failed := _failures(waiting, serial)):
            why = "; ".join(f"{n}: {error}" for n, error in failed.items())
            raise LaunchError(f"the runtime did not come up: {why} (see `mailwright logs`)")
        if time.monotonic() > deadline:
            why = "; ".join(
                f"{n}: {h['state']} {h['last_error']}".strip() for n, h in waiting.items()
            )
            raise LaunchError(f"the runtime did not come up: {why or 'no supervisor'}")
        time.sleep(0.2)


def _runs(host: dict[str, Any], serial: int) -> bool:
    # A supervisor of an earlier mailwright, still running, reports no serial per host.
    return bool(host["state"] == "running" and host.get("serial", serial) == serial)


def _failures(waiting: dict[str, dict[str, Any]], serial: int) -> dict[str, str]:
    """Why hosts will not run `serial`: stopped with an error, or their reload of it failed."""
    failed = {n: h["last_error"] for n, h in waiting.items() if h["state"] == "stopped"}
    for name, host in waiting.items():
        if (refused := host.get("reload_failed")) and refused["serial"] == serial:
            failed[name] = f"reload of serial {serial} failed: {refused['error']}"
    return {n: error for n, error in failed.items() if error}


def _answers(host: dict[str, Any]) -> bool:
    for endpoint in host["services"].values():
        address, _, port = endpoint.rpartition(":")
        try:
            with socket.create_connection((address, int(port)), timeout=1):
                pass
        except OSError:
            return False
    return True


def stop_runtime(state_dir: Path, timeout: float = 30.0) -> bool:
    """Stop every host gracefully (queues stay on disk), then the supervisor, which removes
    its lab; what a killed one left of a lab is removed here. False if nothing ran."""
    pid = supervisor_pid(state_dir)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while supervisor_pid(state_dir) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    lab = (state_dir / "runtime" / LAB_REGISTRY).exists()
    if lab:
        Lab(state_dir / "runtime").down()
    return pid is not None or lab


class LocalTarget:
    """The Target of a state directory's supervisor (runtime/targets/__init__.py)."""

    def __init__(self, state_dir: Path, runtime: str = "local") -> None:
        self.state_dir = state_dir
        self.runtime = runtime  # "local" (loopback) or "netns" (the lab's namespaces)

    def launch(
        self,
        artifacts: Path,
        serial: int,
        actions: Sequence[RuntimeAction],
        progress: Progress | None = None,
    ) -> None:
        launch(self.state_dir, artifacts, serial, actions, progress, runtime=self.runtime)

    def ensure_running(self, serial: int, progress: Progress | None = None) -> None:
        ensure_running(self.state_dir, serial, progress, self.runtime)

    def wait_until_moved(
        self, stores: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[str]:
        return wait_until_moved(self.state_dir, stores, progress)

    def status(self) -> dict[str, Any]:
        return status(self.state_dir)

    def down(self) -> bool:
        return stop_runtime(self.state_dir)
