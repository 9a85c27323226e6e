"""Bad input at the command line gets one clear line (issue: every bad input gets one clear
line): the runtime switch, plans told from specs by content, purge of what is not retained,
locks, a plan of another state, --version and -h."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from mailwright.runtime.store.mailstore import MailStore
from tests.helpers import MAILWRIGHT, SEED_DIR

MINASI = SEED_DIR / "minasi.yaml"
SEND = ("--from", "jane@dcnw.com", "--to", "mark@minasi.com", "--subject", "s", "--body", "b")


def mailwright(
    *args: str, runtime: str = "off", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILWRIGHT_RUNTIME": runtime, "NO_COLOR": "1"}
    return subprocess.run(
        [MAILWRIGHT, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


@pytest.mark.parametrize("value", ["0", "false", "OFF", "No"])
def test_the_usual_spellings_of_off_keep_the_runtime_off(tmp_path: Path, value: str) -> None:
    done = mailwright(
        "apply", str(MINASI), "--state", str(tmp_path / "s"), "--auto-approve", runtime=value
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "s" / "runtime" / "supervisor.pid").exists()


def test_a_runtime_switch_that_is_neither_is_refused_before_anything(tmp_path: Path) -> None:
    done = mailwright(
        "apply", str(MINASI), "--state", str(tmp_path / "s"), "--auto-approve", runtime="of"
    )
    assert done.returncode == 1
    assert done.stderr == (
        "error: MAILWRIGHT_RUNTIME='of' is neither on (on, 1, true, yes) nor off "
        "(off, 0, false, no)\n"
    )
    assert not (tmp_path / "s" / "state.json").exists()


def test_a_spec_and_a_plan_are_told_apart_by_content_not_by_name(tmp_path: Path) -> None:
    spec = tmp_path / "minasi.spec"  # a spec not named .yaml
    shutil.copy(MINASI, spec)
    state = str(tmp_path / "s")
    planned = tmp_path / "saved.yaml"  # a plan named .yaml
    done = mailwright("plan", str(spec), "--state", state, "--out", str(planned))
    assert done.returncode == 0, done.stderr
    done = mailwright("apply", str(planned), "--state", state)
    assert done.returncode == 0, done.stderr
    assert "Apply complete!" in done.stdout


def test_purge_refuses_what_is_not_retained_and_an_empty_state(tmp_path: Path) -> None:
    state = tmp_path / "s"
    done = mailwright("purge", "nobody", "--state", str(state))
    empty = f"error: {state} holds no applied state; nothing to purge\n"
    assert (done.returncode, done.stderr) == (1, empty)
    assert not state.exists()
    assert mailwright("apply", str(MINASI), "--state", str(state), "--auto-approve").returncode == 0
    done = mailwright("purge", "nobody", "--state", str(state))
    assert done.returncode == 1
    unknown = "error: nothing retained is called nobody (retained: none); nothing purged\n"
    assert done.stderr == unknown


def test_a_lock_names_its_state_and_tells_a_dead_holder_from_garbage(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    lock = state / "lock"
    unlock = f"`mailwright force-unlock --state {state}`"
    gone = 2**22 + 7  # above pid_max's default: no process has it
    lock.write_text(json.dumps({"pid": gone, "host": socket.gethostname(), "since": "x"}))
    done = mailwright("apply", str(MINASI), "--state", str(state), "--auto-approve")
    assert done.stderr == (
        f"error: {lock} was left by pid {gone}, which is no longer running; run {unlock}\n"
    )
    lock.write_text("[1, 2]")
    done = mailwright("apply", str(MINASI), "--state", str(state), "--auto-approve")
    garbage = f"error: {lock} is not a lock mailwright wrote; if no apply runs, run {unlock}\n"
    assert done.stderr == garbage


def test_a_plan_of_another_state_says_so(tmp_path: Path) -> None:
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    for state in (one, two):
        assert mailwright("apply", str(MINASI), "--state", state, "--auto-approve").returncode == 0
    changed = tmp_path / "minasi.yaml"
    changed.write_text(MINASI.read_text().replace("Mark", "Marc"), encoding="utf-8")
    saved = tmp_path / "plan.json"
    assert mailwright("plan", str(changed), "--state", one, "--out", str(saved)).returncode == 0
    done = mailwright("apply", str(saved), "--state", two)
    assert done.returncode == 1
    assert "was planned against another state (lineage " in done.stderr
    assert f"{two} has lineage " in done.stderr


def test_version_and_short_help() -> None:
    assert mailwright("--version").stdout.startswith("mailwright ")
    assert "Usage: mailwright" in mailwright("-h").stdout
    assert "Usage: mailwright validate" in mailwright("validate", "-h").stdout


@pytest.mark.parametrize(
    ("state", "said"),
    [
        ([1, 2], "is not a mailwright state: not a JSON object"),
        ({"serial": -4}, "`serial` must be 0 or more, not -4"),
        ({"serial": "1"}, "`serial` must be a whole number, not '1'"),
        ({"serial": None}, "`serial` must be a whole number, not None"),
        ({"lineage": None}, "`lineage` must be a string, not None"),
    ],
)
def test_a_state_file_that_lies_is_refused_in_one_line(
    tmp_path: Path, state: object, said: str
) -> None:
    good = {"format_version": 1, "serial": 1, "lineage": "x", "applied": {}, "host_addresses": {}}
    folder = tmp_path / "s"
    folder.mkdir()
    document = {**good, **state} if isinstance(state, dict) else state
    (folder / "state.json").write_text(json.dumps(document))
    done = mailwright("plan", str(MINASI), "--state", str(folder))
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {folder / 'state.json'}")
    assert done.stderr.endswith(f"{said}\n") and done.stderr.count("\n") == 1


def test_operating_system_refusals_are_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    done = mailwright("plan", str(MINASI), "--state", str(a_file))
    assert done.stderr == f"error: {a_file} is a file, not a state directory (see --state)\n"
    done = mailwright("compile", str(MINASI), "--out", str(a_file))
    assert done.stderr == f"error: cannot use {a_file / 'Minasi'}: Not a directory\n"
    assert "Traceback" not in done.stderr


def test_conflicting_output_switches_are_refused(tmp_path: Path) -> None:
    state = str(tmp_path / "s")
    done = mailwright("plan", str(MINASI), "--state", state, "--json", "--summary")
    assert done.stderr == "error: --summary is text only; drop --json or --format\n"
    done = mailwright("plan", str(MINASI), "--state", state, "--json", "--format", "markdown")
    assert done.stderr == "error: --json and --format markdown ask for two formats; give one\n"


def test_send_without_a_terminal_says_how_to_give_the_password(tmp_path: Path) -> None:
    done = subprocess.run(
        [MAILWRIGHT, "send", *SEND, "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == (
        "error: no terminal to ask the password on: put it in an environment variable and "
        "name it with --password-env VAR\n"
    )


def test_retained_mail_is_said_at_apply_listed_and_purged(tmp_path: Path) -> None:
    state, spec = tmp_path / "s", tmp_path / "minasi.yaml"
    text = MINASI.read_text(encoding="utf-8")
    spec.write_text(text, encoding="utf-8")
    assert mailwright("apply", str(spec), "--state", str(state), "--auto-approve").returncode == 0
    MailStore(state / "hosts" / "arlington" / "store").deliver("paula", "<m@x>", b"Subject: x\n\n")
    spec.write_text(text[: text.index("  - alias: paula")] + text[text.index("\ndns:") :])
    done = mailwright("apply", str(spec), "--state", str(state), "--auto-approve")
    kept = state / "retained" / "Minasi" / "paula.2"
    assert done.stderr == (
        f"note: the mail of Minasi/paula is kept in {kept} (`mailwright purge Minasi/paula` "
        "deletes it)\n"
    )
    listed = mailwright("retained", "--state", str(state)).stdout
    assert listed == f"Minasi/paula.2  1 messages  {kept}\n"
    assert mailwright("purge", "Minasi/paula", "--state", str(state)).returncode == 0
    nothing = f"Nothing is retained in {state}.\n"
    assert mailwright("retained", "--state", str(state)).stdout == nothing


def test_status_exits_1_when_nothing_runs_in_json_too(tmp_path: Path) -> None:
    for form in ((), ("--json",)):
        assert mailwright("status", *form, "--state", str(tmp_path)).returncode == 1
