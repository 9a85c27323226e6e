"""The supervisor's decisions, without real hosts: reconcile, restart or reload, backoff, status.

The supervisor starts hosts through the `subprocess` module it imports; the tests hand it a
stand-in whose Popen keeps the command line the supervisor asked for and starts a small Python
process instead (it says `ready`, says `SIGHUP` on each SIGHUP, and sleeps). Every process a test
started is stopped by its pid when the test ends. The clock the supervisor reads is a fake, so
the backoff is tested without waiting for it. tests/e2e/test_supervisor.py runs the real thing.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwright.runtime.supervisor import daemon as supervisor
from mailwright.runtime.supervisor.daemon import MAX_BACKOFF, Supervisor
from mailwright.runtime.targets.placement import Loopback
from tests.helpers import GOLDEN, wait_until

# A host that starts, answers SIGHUP in its log and otherwise sleeps until it is stopped.
SLEEPER = """\
import signal, sys, time
signal.signal(signal.SIGHUP, lambda *_: print("SIGHUP", flush=True))
print("ready", flush=True)
while True:
    time.sleep(60)
"""
# A host that dies at once.
DIES = "import sys; sys.exit(3)"
PEM = GOLDEN / "seed/Minasi/gwart.txt"  # stands in for a certificate: only copied, never read
ARLINGTON = json.loads((GOLDEN / "seed/Minasi/hosts/arlington.json").read_text(encoding="utf-8"))


class Commands:
    """Stands in for the `subprocess` module inside mailwright.runtime.supervisor."""

    TimeoutExpired = subprocess.TimeoutExpired
    STDOUT = subprocess.STDOUT

    def __init__(self) -> None:
        self.script = SLEEPER
        self.asked: list[list[str]] = []
        self.started: list[subprocess.Popen[bytes]] = []

    def Popen(self, arguments: list[str], **options: Any) -> subprocess.Popen[bytes]:  # noqa: N802
        self.asked.append(arguments)
        self.started.append(subprocess.Popen([sys.executable, "-c", self.script], **options))
        return self.started[-1]


class Clock:
    """Stands in for the `time` module inside the supervisor: time() only moves when told."""

    strftime = staticmethod(time.strftime)
    sleep = staticmethod(time.sleep)

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[Commands]:
    fake = Commands()
    monkeypatch.setattr(supervisor, "subprocess", fake)
    yield fake
    for process in fake.started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(supervisor, "time", fake)
    return fake


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir()
    return folder


def apply(state: Path, serial: int, hosts: dict[str, tuple[str, dict[str, Any]]]) -> None:
    """What `apply` leaves for the supervisor: each host's config under the serial's artifacts
    (laid out as the compiler writes it, beside the seed's other Minasi artifacts) and the
    state's serial and host addresses."""
    for name, (_, config) in hosts.items():
        organization, server = name.split("/", 1)
        tree = state / "artifacts" / str(serial) / organization
        if not tree.exists():
            shutil.copytree(GOLDEN / "seed/Minasi", tree)
        path = tree / "hosts" / f"{server}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        servers = json.loads((tree / "servers.json").read_text(encoding="utf-8"))
        servers[server] = {k: v for k, v in config["server"].items() if k != "name"}
        (tree / "servers.json").write_text(json.dumps(servers), encoding="utf-8")
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    addresses = {name: address for name, (address, _) in hosts.items()}
    document = {"serial": serial, "host_addresses": addresses}
    (state / "state.json").write_text(json.dumps(document), encoding="utf-8")


def changed(**members: Any) -> dict[str, Any]:
    """Arlington's config with some top-level members, or server fields (`server_*`), replaced."""
    config: dict[str, Any] = json.loads(json.dumps(ARLINGTON))
    for key, value in members.items():
        if key.startswith("server_"):
            config["server"][key.removeprefix("server_")] = value
        else:
            config[key] = value
    return config


def log(state: Path, server: str) -> str:
    path = state / "runtime" / "logs" / f"{server}.log"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def wait_ready(state: Path, server: str) -> None:
    wait_until(lambda: "ready" in log(state, server), 10, f"{server} to start")


def started(state: Path) -> Supervisor:
    """A supervisor that reconciled the state once, its hosts ready for signals."""
    running = Supervisor(state)
    running.reconcile()
    for host in running.hosts.values():
        wait_ready(state, host.server)
    return running


@pytest.fixture
def running(commands: Commands, state: Path) -> Supervisor:
    """A supervisor that runs Arlington (serial 1, on 127.0.1.9)."""
    apply(state, 1, {"Minasi/arlington": ("127.0.1.9", ARLINGTON)})
    return started(state)


# --- reconcile ------------------------------------------------------------------------------


def test_reconcile_starts_each_host_of_the_serial_on_its_address(
    running: Supervisor, commands: Commands, state: Path
) -> None:
    bundle = state / "hosts/arlington/bundle"
    [arguments] = commands.asked
    assert arguments[:4] == [sys.executable, "-m", "mailwright.runtime.host", str(bundle)]
    assert arguments[4:8] == ["--data", str(state / "hosts/arlington"), "--bind", "127.0.1.9"]
    asked_ports = dict(zip(arguments[8::2], map(int, arguments[9::2]), strict=True))
    assert asked_ports == {
        f"--{service}-port": port for service, port in Loopback().ports().items()
    }
    host = running.hosts["Minasi/arlington"]
    assert host.process is commands.started[0]
    assert host.events[-1].endswith(f"started pid {host.process.pid}")


def test_the_same_serial_twice_changes_nothing(
    running: Supervisor, commands: Commands, state: Path
) -> None:
    running.reconcile()
    assert len(commands.asked) == 1


def test_a_start_forgets_what_the_last_process_reported(commands: Commands, state: Path) -> None:
    reports = state / "hosts" / "arlington"
    reports.mkdir(parents=True)
    for report in ("endpoints.json", "loaded.json"):
        (reports / report).write_text("{}", encoding="utf-8")
    apply(state, 1, {"Minasi/arlington": ("127.0.1.9", ARLINGTON)})
    started(state)
    assert sorted(p.name for p in reports.iterdir()) == ["bundle"]


# --- converge: restart or reload ------------------------------------------------------------


def test_a_change_of_mailboxes_is_a_sighup_to_the_same_process(
    running: Supervisor, commands: Commands, state: Path
) -> None:
    apply(state, 2, {"Minasi/arlington": ("127.0.1.9", changed(mailboxes=[]))})
    running.reconcile()
    wait_until(lambda: "SIGHUP" in log(state, "arlington"), 10, "the host to get SIGHUP")
    host = running.hosts["Minasi/arlington"]
    assert len(commands.asked) == 1
    assert host.process is commands.started[0] and host.process.poll() is None
    assert host.config.resolve() == state / "bundles/local/2/Minasi/arlington/host.json"
    assert host.events[-1].endswith("reloading serial 2")


@pytest.mark.parametrize(
    ("change", "address", "reason"),
    [
        ({"server_roles": ["store"]}, "127.0.1.9", "roles"),
        ({"server_services": {"pop3": 110}}, "127.0.1.9", "services"),
        ({"tls": {"certificate": str(PEM), "private_key": str(PEM)}}, "127.0.1.9", "tls"),
        ({}, "127.0.1.10", "address"),
    ],
    ids=["roles", "services", "tls", "address"],
)
def test_a_change_of_what_a_host_listens_on_is_a_restart(
    running: Supervisor,
    commands: Commands,
    state: Path,
    *,
    change: dict[str, Any],
    address: str,
    reason: str,
) -> None:
    apply(state, 2, {"Minasi/arlington": (address, changed(**change))})
    running.reconcile()
    first, second = commands.started
    assert first.poll() is not None
    host = running.hosts["Minasi/arlington"]
    assert host.process is second and host.address == address
    bundle = state / "bundles/local/2/Minasi/arlington"
    assert (state / "hosts/arlington/bundle").resolve() == bundle
    assert any(event.endswith(f"stopped (listens differently: {reason})") for event in host.events)
    assert "SIGHUP" not in log(state, "arlington")


def test_a_host_removed_from_the_spec_is_stopped(commands: Commands, state: Path) -> None:
    beta = changed(server_name="beta")
    apply(
        state, 1, {"Minasi/arlington": ("127.0.1.9", ARLINGTON), "Minasi/beta": ("127.0.1.8", beta)}
    )
    running = started(state)
    apply(state, 2, {"Minasi/arlington": ("127.0.1.9", ARLINGTON)})
    running.reconcile()
    assert sorted(running.hosts) == ["Minasi/arlington"]
    arlington, beta_process = commands.started
    assert beta_process.poll() is not None and arlington.poll() is None


# --- watch: restarts with a growing delay ---------------------------------------------------


def test_a_host_that_dies_is_restarted_after_a_delay_that_doubles_up_to_the_limit(
    commands: Commands, clock: Clock, state: Path
) -> None:
    commands.script = DIES
    apply(state, 1, {"Minasi/arlington": ("127.0.1.9", ARLINGTON)})
    running = Supervisor(state)
    running.reconcile()
    host = running.hosts["Minasi/arlington"]
    delays: list[float] = []
    for restarts in range(1, 8):
        assert host.process is not None
        host.process.wait(10)
        running.watch()
        assert host.process is None  # not before its delay
        assert (host.restarts, host.last_error) == (restarts, "exited with status 3")
        assert host.events[-1].endswith("died (exited with status 3)")
        delays.append(host.not_before - clock.now)
        clock.now = host.not_before - 0.001
        running.watch()
        assert host.process is None
        clock.now = host.not_before
        running.watch()
    assert delays == [1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF]
    assert len(commands.asked) == 8


def test_a_stopping_supervisor_restarts_nothing(
    commands: Commands, clock: Clock, state: Path
) -> None:
    commands.script = DIES
    apply(state, 1, {"Minasi/arlington": ("127.0.1.9", ARLINGTON)})
    running = Supervisor(state)
    running.reconcile()
    host = running.hosts["Minasi/arlington"]
    assert host.process is not None
    host.process.wait(10)
    running.stopping = True
    clock.now += 3600
    running.watch()
    assert host.process is None and len(commands.asked) == 1


# --- status ---------------------------------------------------------------------------------


def status(state: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((state / "runtime/status.json").read_text())
    return document


def test_status_says_starting_then_running_with_what_the_host_reported(
    running: Supervisor, commands: Commands, state: Path
) -> None:
    running.write_status()
    arlington = status(state)["hosts"]["Minasi/arlington"]
    assert (arlington["state"], arlington["services"], arlington["serial"]) == (
        "starting",
        {},
        None,
    )
    reports = state / "hosts" / "arlington"
    (reports / "endpoints.json").write_text('{"pop3": "127.0.1.9:110"}', encoding="utf-8")
    (reports / "loaded.json").write_text('{"serial": 1, "failed": "bad"}', encoding="utf-8")
    (reports / "queue").mkdir()
    for name in ("a.msg", "b.msg", "c.tmp"):
        (reports / "queue" / name).write_bytes(b"")
    running.write_status()
    document = status(state)
    assert document["serial"] == 1 and isinstance(document["pid"], int)
    arlington = document["hosts"]["Minasi/arlington"]
    assert arlington == {
        "pid": commands.started[0].pid,
        "state": "running",
        "address": "127.0.1.9",
        "services": {"pop3": "127.0.1.9:110"},
        "serial": 1,
        "reload_failed": "bad",
        "queue": 2,
        "restarts": 0,
        "last_error": "",
        "events": running.hosts["Minasi/arlington"].events,
    }
    assert sorted(p.name for p in (state / "runtime").iterdir()) == ["logs", "status.json"]


def test_status_keeps_the_last_ten_events_and_shows_a_stopped_host(
    running: Supervisor, commands: Commands, state: Path
) -> None:
    host = running.hosts["Minasi/arlington"]
    host.events += [f"event {n}" for n in range(12)]
    running._stop(host, "test")
    running.write_status()
    arlington = status(state)["hosts"]["Minasi/arlington"]
    assert (arlington["state"], arlington["pid"]) == ("stopped", None)
    assert arlington["events"][:9] == [f"event {n}" for n in range(3, 12)]
    assert arlington["events"][9].endswith("stopped (test)")


# --- run: no host outlives its supervisor ---------------------------------------------------


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """run() sets SIGTERM and SIGHUP handlers; pytest's own come back afterwards."""
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for number, handler in previous.items():
        signal.signal(number, handler)


@pytest.mark.usefixtures("signal_handlers")
def test_a_broken_state_stops_every_host_and_the_supervisor(
    running: Supervisor, commands: Commands, state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (state / "state.json").unlink()
    running.run()
    assert commands.started[0].poll() is not None
    [record] = [r for r in caplog.records if r.name == "mailwright.supervisor"]
    assert record.getMessage().startswith("stopping: FileNotFoundError: ")
    assert status(state)["hosts"]["Minasi/arlington"]["state"] == "stopped"


def test_the_supervisor_process_stops_on_sigterm(state: Path) -> None:
    apply(state, 1, {})
    process = subprocess.Popen(
        [sys.executable, "-m", "mailwright.runtime.supervisor", "--state", str(state)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        runtime = state / "runtime"
        wait_until((runtime / "status.json").exists, 20, "the first status")
        assert (runtime / "supervisor.pid").read_text() == str(process.pid)
        assert status(state) == {"pid": process.pid, "serial": 1, "runtime": "local", "hosts": {}}
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert not (runtime / "supervisor.pid").exists()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()
