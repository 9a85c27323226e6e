"""How `plan` and `apply` write: colour only on a terminal, progress bars only on a terminal.

The plan goes to stdout written directly (rich would take minutes over two million lines);
these tests hold it to what rich did: plain text to a pipe, rich's own escapes per line when a
terminal is forced (FORCE_COLOR, as rich reads it), and the same text either way once the
escapes are taken out. Progress bars go to stderr, and only when stderr is a real terminal (a
pty here).
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from mailwright.compiler.state import write_tree_durably
from tests.helpers import EPOCH, MAILWRIGHT, SEED_DIR, SEED_FILES

ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Steps the CLI shows a bar for while a plan is made (compiler/apply.py names them).
PLAN_STEPS = ("Loading specs", "Compiling", "Planning")


def environment(**extra: str) -> dict[str, str]:
    """None of our caller's colour settings; a fixed build date, no runtime; and `extra`."""
    unset = {"NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "MAILWRIGHT_STATE"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    fixed = {
        "SOURCE_DATE_EPOCH": EPOCH,
        "TERM": "xterm-256color",
        "MAILWRIGHT_RUNTIME": "off",
    }
    return {**env, **fixed, **extra}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    for spec in SEED_FILES:
        shutil.copy(SEED_DIR / spec, tmp_path / spec)
    return tmp_path


def run(workspace: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILWRIGHT, *args, *SEED_FILES, "--state", "state"],
        cwd=workspace,
        env=environment(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_with_terminal_stderr(workspace: Path, *args: str) -> tuple[int, str, str]:
    """`mailwright ARGS SPECS` with stderr on a pty and stdout on a pipe: exit code, stdout,
    and what reached the terminal."""
    primary, secondary = pty.openpty()
    received: list[bytes] = []

    def drain() -> None:  # read as it comes: a full pty would block the child's writes
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child and we closed the terminal's other end
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        with subprocess.Popen(
            [MAILWRIGHT, *args, *SEED_FILES, "--state", "state"],
            cwd=workspace,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
        ) as process:
            os.close(secondary)
            stdout, _ = process.communicate(timeout=120)
        reader.join(timeout=10)
    finally:
        os.close(primary)
    return process.returncode, stdout, b"".join(received).decode("utf-8", "replace")


def test_a_plan_to_a_pipe_has_no_escapes_and_no_progress(workspace: Path) -> None:
    result = run(workspace, "plan")
    assert result.returncode == 0, result.stderr
    assert "+ mailbox Minasi/mark\n" in result.stdout
    assert "\x1b" not in result.stdout
    assert result.stderr == ""  # no bars, nor anything else, where there is no terminal


def test_a_forced_terminal_gets_rich_colours_on_the_same_text(workspace: Path) -> None:
    plain = run(workspace, "plan").stdout
    coloured = run(workspace, "plan", FORCE_COLOR="1").stdout
    assert "\x1b[32m  + mailbox Minasi/mark\x1b[0m\n" in coloured  # create: green
    assert "\x1b[1mmailwright will perform the following actions:\x1b[0m\n" in coloured
    # Every line of a change in its colour, each line closed before its newline.
    assert '\x1b[32m      alias: "mark"\x1b[0m\n' in coloured
    assert ESCAPE.sub("", coloured) == plain


def test_progress_goes_to_stderr_on_a_terminal_only(workspace: Path) -> None:
    plain = run(workspace, "plan").stdout
    code, stdout, terminal = run_with_terminal_stderr(workspace, "plan")
    assert code == 0, terminal
    assert stdout == plain  # stdout is still a pipe: no colour, the plan unchanged
    shown = ESCAPE.sub("", terminal)
    assert any(step in shown for step in PLAN_STEPS), terminal


def test_apply_shows_progress_on_a_terminal_and_nothing_else(workspace: Path) -> None:
    code, stdout, terminal = run_with_terminal_stderr(workspace, "apply", "--auto-approve")
    assert code == 0, terminal
    assert "Apply complete!" in stdout
    assert "\x1b" not in stdout
    # The bars are transient: drawn on the terminal, then put away.
    assert "\x1b" in terminal
    assert "Traceback" not in terminal


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_a_tree_is_written_whole_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool
) -> None:
    if not syncfs:
        monkeypatch.setattr("mailwright.compiler.state.FILES_NEED_FSYNC", True)
    files = {"manifest.json": "{}\n", "Org/gal.json": "[]\n", "Org/hosts/a.json": "{}\n"}
    seen: list[tuple[int, int]] = []
    write_tree_durably(tmp_path / "tree", files, lambda done, total: seen.append((done, total)))
    on_disk = {
        str(p.relative_to(tmp_path / "tree")): p.read_text()
        for p in (tmp_path / "tree").rglob("*")
        if p.is_file()
    }
    assert on_disk == files
    assert seen == [(1, 3), (2, 3), (3, 3)]
