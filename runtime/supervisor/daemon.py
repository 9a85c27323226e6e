"""The supervisor: keeps one process per applied host running, in the background.

    python -m mailwright.runtime.supervisor --state DIR

It outlives the CLI that started it. It follows the state directory: when `apply` writes a new
serial it starts new hosts, restarts the hosts that listen differently (runtime/host/change.py:
roles, services, TLS files, or their loopback address), sends every other host SIGHUP to
reload the serial (its mailboxes, settings, GAL, GWART, zones) with its sessions kept open, and
stops removed hosts. Each host reports the serial it runs (`loaded.json` beside its
`endpoints.json`), and status.json shows it. A host that
dies is restarted with a growing delay. Each host listens on its own loopback address (kept in
state.json); as root on the spec's ports, otherwise on the contract's fixed unprivileged ones.
`<state>/runtime/status.json` says what runs; SIGTERM stops every host, then the supervisor.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailwright.runtime import logs
from mailwright.runtime.bundle import HOST_CONFIG, MANIFEST, point, state_credentials, write_bundle
from mailwright.runtime.contract import Peer
from mailwright.runtime.discovery import spec_peers
from mailwright.runtime.host.change import host_change
from mailwright.runtime.targets.placement import RUNTIMES, Loopback, Placement, placement

log = logging.getLogger("mailwright.supervisor")

MAX_BACKOFF = 30.0


@dataclass
class Host:
    name: str  # "<org>/<server>"
    config: Path
    address: str
    process: subprocess.Popen[bytes] | None = None
    config_text: str = ""
    restarts: int = 0
    backoff: float = 1.0
    not_before: float = 0.0
    last_error: str = ""
    events: list[str] = field(default_factory=list)

    @property
    def server(self) -> str:
        return self.name.split("/", 1)[1]


class Supervisor:
    def __init__(self, state: Path, place: Placement | None = None) -> None:
        self.state = state
        self.place = place or Loopback()
        self.runtime = state / "runtime"
        self.hosts: dict[str, Host] = {}
        self.serial = -1
        self.stopping = False

    def _read_state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "state.json").read_text(encoding="utf-8"))
        return data

    def reconcile(self) -> None:
        state = self._read_state()
        if state["serial"] == self.serial:
            return
        self.serial = state["serial"]
        tree = self.state / "artifacts" / str(self.serial)
        host_addresses: dict[str, str] = state["host_addresses"]
        peers = spec_peers(tree, sorted(host_addresses))  # read once, for every step below
        if self.place.rebuilds(peers):
            for host in self.hosts.values():
                self._stop(host, f"the {self.place.name} runtime is made anew")
        self.place.prepare(tree, peers)
        wanted = self._bundle(tree, peers, host_addresses)
        for name in sorted(set(self.hosts) - set(wanted)):
            self._stop(self.hosts.pop(name), "removed from the spec")
        for name, loopback in sorted(host_addresses.items()):
            self._converge(name, wanted[name], self.place.address(name, loopback, peers[name]))
        for old in self.state.glob("bundles/*/*"):
            if old.name.isdigit() and int(old.name) < self.serial - 1:
                shutil.rmtree(old, ignore_errors=True)

    def _bundle(
        self, tree: Path, peers: Mapping[str, Peer], host_addresses: dict[str, str]
    ) -> dict[str, Path]:
        """Every host's bundle of the current serial, each host's `bundle` path pointed at it;
        those paths by host. The bundles are hard links into the applied tree (a bundle of a
        serial never changes: one written whole is used as it is)."""
        addresses = self.place.addresses(peers, host_addresses)
        zones = self.place.zones(tree)
        folder = self.state / "bundles" / self.place.name / str(self.serial)
        links = {}
        for name in host_addresses:
            organization, server = name.split("/", 1)
            bundle = folder / organization / server
            if not (bundle / MANIFEST).exists():
                credentials = state_credentials(self.state, organization, server)
                write_bundle(
                    tree / organization,
                    server,
                    bundle,
                    self.serial,
                    credentials,
                    addresses,
                    zones,
                    link=True,
                )
            links[name] = self.state / "hosts" / server / "bundle"
            links[name].parent.mkdir(parents=True, exist_ok=True)
            point(links[name], bundle)
        return links

    def _converge(self, name: str, bundle: Path, address: str) -> None:
        config = bundle / HOST_CONFIG
        text = config.read_text(encoding="utf-8")
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = Host(name, config, address)
        else:
            listening = list(host_change(host.config_text, text).listening)
            listening += ["address"] if host.address != address else []
            if listening:
                self._stop(host, f"listens differently: {', '.join(listening)}")
            elif host.process is not None:
                # The host reads the state's current serial and reports it in loaded.json.
                host.config, host.config_text = config, text
                host.process.send_signal(signal.SIGHUP)
                host.events.append(f"{_now()} reloading serial {self.serial}")
                return
        host.config, host.address, host.config_text = config, address, text
        self._start(host)

    def _start(self, host: Host) -> None:
        self._forget_reports(host)
        logged = self.runtime / "logs"
        logged.mkdir(parents=True, exist_ok=True)
        folder = self.state / "hosts" / host.server
        arguments = self.place.prefix(host.server)
        arguments += [sys.executable, "-m", "mailwright.runtime.host", str(folder / "bundle")]
        arguments += ["--data", str(folder), "--bind", host.address]
        for service, port in self.place.ports().items():
            arguments += [f"--{service}-port", str(port)]
        with open(logged / f"{host.server}.log", "ab") as output:
            host.process = subprocess.Popen(arguments, stdout=output, stderr=subprocess.STDOUT)
        host.events.append(f"{_now()} started pid {host.process.pid}")

    def _stop(self, host: Host, why: str) -> None:
        if host.process is None:
            return
        host.process.terminate()
        try:
            host.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            host.process.kill()
            host.process.wait()
        host.events.append(f"{_now()} stopped ({why})")
        host.process = None
        self._forget_reports(host)

    def _forget_reports(self, host: Host) -> None:
        """What the host's last process said (where it listens, which serial it runs): a new
        one says it again once it serves."""
        for report in ("endpoints.json", "loaded.json"):
            (self.state / "hosts" / host.server / report).unlink(missing_ok=True)

    def watch(self) -> None:
        """Restart hosts that died, with a growing delay; the event shows in status."""
        for host in self.hosts.values():
            if host.process is not None and (code := host.process.poll()) is not None:
                host.process = None
                host.restarts += 1
                host.last_error = f"exited with status {code}"
                host.events.append(f"{_now()} died ({host.last_error})")
                host.not_before = time.time() + host.backoff
                host.backoff = min(MAX_BACKOFF, host.backoff * 2)
            if host.process is None and time.time() >= host.not_before and not self.stopping:
                self._start(host)

    def write_status(self) -> None:
        hosts = {}
        for name, host in sorted(self.hosts.items()):
            services = _report(self.state / "hosts" / host.server / "endpoints.json")
            loaded = _report(self.state / "hosts" / host.server / "loaded.json")
            hosts[name] = {
                "pid": host.process.pid if host.process else None,
                "state": "running"
                if host.process and services
                else "starting"
                if host.process
                else "stopped",
                "address": host.address,
                "services": services,
                "serial": loaded.get("serial"),
                "reload_failed": loaded.get("failed"),
                "queue": _queue_depth(self.state / "hosts" / host.server / "queue"),
                "restarts": host.restarts,
                "last_error": host.last_error,
                "events": host.events[-10:],
            }
        document = {
            "pid": os.getpid(),
            "serial": self.serial,
            "runtime": self.place.name,
            "hosts": hosts,
        }
        temp = self.runtime / ".status.json.tmp"
        temp.write_text(json.dumps(document, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(temp, self.runtime / "status.json")

    def run(self) -> None:
        self.runtime.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, lambda *_: None)  # wakes the loop; reconcile reads state
        try:
            while not self.stopping:
                self.reconcile()
                self.watch()
                self.write_status()
                time.sleep(0.2)
        except Exception as exc:
            # The state directory went away or broke, or the lab could not be made.
            log.error("stopping: %s: %s", type(exc).__name__, exc)
        finally:
            for host in self.hosts.values():
                self._stop(host, "down")
            self.place.close()
            with contextlib.suppress(OSError):
                self.write_status()

    def _on_term(self, *_: object) -> None:
        self.stopping = True


def _report(path: Path) -> dict[str, Any]:
    """A host's JSON report (endpoints.json, loaded.json); empty until it wrote one."""
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document


def _queue_depth(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.msg")) if folder.is_dir() else 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailwright-supervisor")
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--runtime", choices=RUNTIMES, default="local")
    args = parser.parse_args(argv)
    logs.setup("supervisor")
    state = args.state.resolve()
    supervisor = Supervisor(state, placement(args.runtime, state))
    supervisor.runtime.mkdir(parents=True, exist_ok=True)
    # One supervisor a state directory: two applies that each found none running (the first
    # one's pid file not written yet, or the apply that started it killed) start two, and
    # the second would fight the first for every host's ports. The lock goes with the process.
    with open(supervisor.runtime / "supervisor.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another supervisor runs for this state; leaving it")
            return 0
        (supervisor.runtime / "supervisor.pid").write_text(str(os.getpid()))
        try:
            supervisor.run()
        finally:
            (supervisor.runtime / "supervisor.pid").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
