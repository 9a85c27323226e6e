"""Hot reload in parts (issue 13): which change restarts a host and which reloads it, the MTA's
tables swapped by `Mta.reload`, `apply` waiting for each host to run the applied serial, and a
host whose reload fails keeping what it runs.

The whole of it under load (POP3 sessions mid-RETR, smtp-source, the real supervisor) is in
tests/e2e/test_hot_reload.py.
"""

from __future__ import annotations

import copy
import json
import poplib
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailwright.compiler.build import to_json
from mailwright.compiler.plan import runtime_actions
from mailwright.runtime.auth.accounts import Accounts, accounts_from_host
from mailwright.runtime.contract import HostConfig
from mailwright.runtime.host.change import runtime_action
from mailwright.runtime.mta.agent import Mta
from mailwright.runtime.mta.router import Router
from mailwright.runtime.mta.transfer import endpoints_in
from mailwright.runtime.store.mailstore import MailStore
from mailwright.runtime.targets import LaunchError
from mailwright.runtime.targets.local import wait_until_running
from tests.helpers import SEED_DIR, Process

Change = Callable[[dict[str, Any]], None]


def _changed(config: dict[str, Any], change: Change) -> str:
    changed = copy.deepcopy(config)
    change(changed)
    return to_json(changed)


def _mark(config: dict[str, Any]) -> dict[str, Any]:
    mark: dict[str, Any] = config["mailboxes"][0]
    assert mark["alias"] == "mark"
    return mark


def _new_mailbox(config: dict[str, Any]) -> None:
    config["mailboxes"].append({**_mark(config), "alias": "newbie"})


RELOAD, RESTART = "reload", "restart"
# A change of the host config, and what it makes of the running host (and why, in the plan).
CHANGES: dict[str, tuple[Change, str, str]] = {
    "a mailbox added": (_new_mailbox, RELOAD, "mailboxes, gal.json changed"),
    "a password": (
        lambda c: _mark(c).update(password_hash="$2b$04$" + "x" * 53),
        RELOAD,
        "mailboxes, gal.json changed",
    ),
    "a size limit": (
        lambda c: _mark(c).update(size_limit=1_000_000),
        RELOAD,
        "mailboxes, gal.json changed",
    ),
    "POP3 settings": (
        lambda c: c["pop3"].update(idle_timeout=1200),
        RELOAD,
        "pop3, gal.json changed",
    ),
    "IMS settings": (
        lambda c: c["ims"].update(max_message_size=1),
        RELOAD,
        "ims, gal.json changed",
    ),
    "the FQDN": (
        lambda c: c["server"].update(fqdn="arl.minasi.com"),
        RELOAD,
        "server.fqdn, gal.json changed",
    ),
    "a role": (
        lambda c: c["server"].update(roles=["ims", "store"]),
        RESTART,
        "listens differently: roles",
    ),
    "a port": (
        lambda c: c["server"]["services"].update(pop3=995),
        RESTART,
        "listens differently: services",
    ),
    "TLS files": (
        lambda c: c.update(tls={"certificate": "c", "private_key": "k"}),
        RESTART,
        "listens differently: tls",
    ),
}


@pytest.mark.parametrize("what", sorted(CHANGES))
def test_only_what_a_host_listens_on_restarts_it(arlington_path: Path, what: str) -> None:
    text = arlington_path.read_text(encoding="utf-8")
    change, action, reason = CHANGES[what]
    after = _changed(json.loads(text), change)
    assert runtime_action(text, after, ["gal.json"]) == (action, reason)


def test_the_plan_restarts_only_the_host_that_listens_differently(seed_artifacts: Path) -> None:
    old = {
        str(path.relative_to(seed_artifacts)): path.read_text(encoding="utf-8")
        for path in seed_artifacts.rglob("*.json")
    }
    new = dict(old)
    athena = json.loads(old["DCNW/hosts/athena.json"])
    new["DCNW/hosts/athena.json"] = _changed(athena, lambda c: c["server"].update(roles=["dns"]))
    new["DCNW/gal.json"] = old["DCNW/gal.json"].replace("Jane Doe", "Jane Q. Doe")
    assert [(a.host, a.action, a.reason) for a in runtime_actions(old, new)] == [
        ("DCNW/athena", "restart", "listens differently: roles"),
        ("DCNW/dns", "reload", "gal.json changed"),
        ("DCNW/hermes", "reload", "gal.json changed"),
    ]


def test_the_decision_reads_any_layout_of_the_config(arlington: dict[str, Any]) -> None:
    compact = json.dumps(arlington)
    assert runtime_action(to_json(arlington), compact) is None
    roles = copy.deepcopy(arlington)
    roles["server"]["roles"] = ["store"]
    assert runtime_action(compact, json.dumps(roles)) == ("restart", "listens differently: roles")
    assert runtime_action(None, compact) == ("start", "new host")
    assert runtime_action(compact, None) == ("stop", "host removed from the spec")


# --- the MTA's tables ------------------------------------------------------------------------


def test_mta_reload_swaps_the_per_mailbox_tables(
    arlington: dict[str, Any], seed_artifacts: Path, tmp_path: Path
) -> None:
    store = MailStore(tmp_path / "store", {"mark": None, "paula": None})
    host = HostConfig.from_json(arlington)
    accounts = Accounts(accounts_from_host(host))
    router = Router.load(host, seed_artifacts / "Minasi")
    mta = Mta(host, router, tmp_path, store, accounts, endpoints_in(tmp_path))
    paula = store.mailbox("paula")
    kept = store.mailbox("mark")

    config = copy.deepcopy(arlington)
    mark = _mark(config)
    mark.update(size_limit=4096, password_hash="$2b$04$" + "y" * 53)
    mark["protocols"]["pop3"].update(message_format="uuencode", charset="iso-8859-1")
    config["mailboxes"] = [mark]  # paula leaves the host
    reloaded_host = HostConfig.from_json(config)
    reloaded = Router.load(reloaded_host, seed_artifacts / "Minasi")
    mta.reload(reloaded_host, reloaded)

    assert mta.router is reloaded
    assert mta.formats == {"mark": (True, "iso-8859-1")}
    assert set(accounts.accounts) == {"mark"}  # the object the POP3 server and the IMS hold
    assert accounts.accounts["mark"].password_hash == "$2b$04$" + "y" * 53
    assert store.mailbox("mark") is kept and kept.size_limit == 4096
    assert store.mailbox("paula") is not paula  # forgotten: back again, it starts afresh


# --- apply waits for the serial --------------------------------------------------------------


def _status(state: Path, host: dict[str, Any]) -> None:
    runtime = state / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    document = {"pid": None, "serial": 2, "hosts": {"Minasi/arlington": host}}
    (runtime / "status.json").write_text(json.dumps(document), encoding="utf-8")


RUNNING: dict[str, Any] = {
    "state": "running",
    "services": {},
    "last_error": "",
    "reload_failed": None,
}


def test_apply_waits_until_each_host_runs_the_serial(tmp_path: Path) -> None:
    _status(tmp_path, {**RUNNING, "serial": 1})
    with pytest.raises(LaunchError, match="Minasi/arlington: running"):
        wait_until_running(tmp_path, 2, timeout=0.5)
    reloaded = threading.Timer(0.5, _status, (tmp_path, {**RUNNING, "serial": 2}))
    reloaded.start()
    assert wait_until_running(tmp_path, 2, timeout=10)["hosts"]["Minasi/arlington"]["serial"] == 2
    reloaded.join()


def test_apply_fails_at_once_when_a_host_cannot_reload(tmp_path: Path) -> None:
    failed = {"serial": 2, "error": "OSError: gone"}
    _status(tmp_path, {**RUNNING, "serial": 1, "reload_failed": failed})
    with pytest.raises(LaunchError, match="reload of serial 2 failed: OSError: gone"):
        wait_until_running(tmp_path, 2, timeout=30)


# --- a reload that fails ---------------------------------------------------------------------


def _loaded(state: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((state / "hosts/arlington/loaded.json").read_text())
    return report


@pytest.fixture
def applied(
    tmp_path: Path, mailwright: Callable[..., subprocess.CompletedProcess[str]]
) -> tuple[Path, Path]:
    """Minasi of the seed applied (runtime off; the tests run Arlington): its spec, its state."""
    spec = tmp_path / "minasi.yaml"
    shutil.copy(SEED_DIR / "minasi.yaml", spec)
    state = tmp_path / "state"
    done = mailwright("apply", str(spec), "--state", str(state), "--auto-approve")
    assert done.returncode == 0, done.stderr
    return spec, state


def test_a_host_whose_reload_fails_keeps_serving_what_it_runs(
    applied: tuple[Path, Path],
    start_host: Callable[[Path, Path], Process],
    endpoint: Callable[[Path, str, str], tuple[str, int]],
    wait_until: Callable[[Callable[[], bool], float, str], None],
) -> None:
    _, state = applied
    host = start_host(state / "artifacts/1/Minasi/hosts/arlington.json", state)
    assert _loaded(state) == {"serial": None, "failed": None}  # started by hand, not by serial

    state_file = state / "state.json"
    text = state_file.read_text(encoding="utf-8")
    state_file.write_text(json.dumps({**json.loads(text), "serial": 7}), encoding="utf-8")
    host.send_signal(signal.SIGHUP)
    wait_until(lambda: _loaded(state)["failed"] is not None, 10, "the failed reload")
    assert _loaded(state)["failed"]["serial"] == 7
    assert "FileNotFoundError" in _loaded(state)["failed"]["error"]
    assert host.poll() is None
    client = poplib.POP3(*endpoint(state, "arlington", "pop3"), timeout=10)
    assert client.quit().startswith(b"+OK")

    state_file.write_text(text, encoding="utf-8")
    host.send_signal(signal.SIGHUP)
    wait_until(lambda: _loaded(state) == {"serial": 1, "failed": None}, 10, "the reload")


def test_the_ims_in_the_host_process_follows_a_reload(  # noqa: PLR0917 - fixtures
    applied: tuple[Path, Path],
    mailwright: Callable[..., subprocess.CompletedProcess[str]],
    start_host: Callable[[Path, Path], Process],
    endpoint: Callable[[Path, str, str], tuple[str, int]],
    wait_until: Callable[[Callable[[], bool], float, str], None],
    rcpt: Callable[[tuple[str, int], str], int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec, state = applied
    monkeypatch.setenv("MAILWRIGHT_IMS_WORKERS", "0")  # SMTP served by the host itself
    host = start_host(state / "artifacts/1/Minasi/hosts/arlington.json", state)
    smtp = endpoint(state, "arlington", "smtp")
    assert rcpt(smtp, "newbie@minasi.com") == 550
    text = spec.read_text(encoding="utf-8")
    mark = text[text.index("  - alias: mark") : text.index("  - alias: paula")]
    newbie = mark.replace("mark", "newbie").replace("Mark", "Newbie")
    spec.write_text(text.replace(mark, mark + newbie), encoding="utf-8")
    done = mailwright("apply", str(spec), "--state", str(state), "--auto-approve")
    assert done.returncode == 0, done.stderr
    host.send_signal(signal.SIGHUP)
    wait_until(lambda: _loaded(state)["serial"] == 2, 10, "the reload")
    assert rcpt(smtp, "newbie@minasi.com") == 250
