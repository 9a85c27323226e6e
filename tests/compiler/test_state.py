"""The state directory: atomic writes, a lock that names its holder, and reads that survive
a crash or a mangled artifact."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from mailwright.compiler.state import (
    STATE_FORMAT_VERSION,
    LockedError,
    State,
    StateDir,
    StateError,
)
from mailwright.runtime.durable.files import write_atomic


def test_a_missing_state_reads_as_empty(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "nothing-here").read()
    assert state.serial == 0
    assert state.applied == {}
    assert state.host_addresses == {}
    assert StateDir(tmp_path).applied_files(state) == {}


def test_state_round_trips_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    written = State(
        serial=3,
        lineage="lineage-1",
        applied={"Minasi": {"zones": {"minasi.com": {"content_hash": "ab", "serial": 7}}}},
        host_addresses={"Minasi/arlington": "127.0.1.1"},
    )
    state_dir.write(written)
    assert state_dir.read() == written
    assert state_dir.read().zone_serials("Minasi") == {"minasi.com": ("ab", 7)}
    assert json.loads(state_dir.state_file.read_text())["format_version"] == STATE_FORMAT_VERSION
    assert [p.name for p in state_dir.path.iterdir()] == ["state.json"]


def test_a_crash_before_the_rename_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = StateDir(tmp_path)
    state_dir.write(State(serial=1, lineage="kept"))

    def crash(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        raise OSError("injected crash before the rename")

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="injected"):
            state_dir.write(State(serial=2, lineage="kept"))
    assert state_dir.read().serial == 1


def test_write_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "file.bin"
    write_atomic(target, b"first version, rather long")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"format_version": 99, "serial": 1}', "format version 99"),
        ('{"serial": ', "cannot read"),
    ],
)
def test_an_unreadable_state_is_a_state_error(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "state.json").write_text(content)
    with pytest.raises(StateError, match=expected):
        StateDir(tmp_path).read()


def test_the_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    with state_dir.locked():
        holder = state_dir.lock_holder()
        assert holder["pid"] == os.getpid()
        assert holder["host"] == socket.gethostname()
        with pytest.raises(LockedError) as refused, state_dir.locked():
            pass  # pragma: no cover - never reached
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message
        assert socket.gethostname() in message
        assert str(holder["since"]) in message
        assert "force-unlock" in message
    assert not state_dir.lock_file.exists()


def test_the_lock_is_released_when_the_holder_fails(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    with pytest.raises(RuntimeError), state_dir.locked():
        raise RuntimeError("apply failed")
    assert not state_dir.lock_file.exists()


def test_the_lock_waits_up_to_the_timeout(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with state_dir.locked():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    letting_go = threading.Timer(0.3, release.set)
    holder.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        with pytest.raises(LockedError), state_dir.locked(timeout=0.3):
            pass  # pragma: no cover - never reached
        assert time.monotonic() - started >= 0.3
        letting_go.start()
        with state_dir.locked(timeout=10):
            assert state_dir.lock_holder()["pid"] == os.getpid()
    finally:
        release.set()
        holder.join()
        letting_go.cancel()


def test_force_unlock_clears_a_stale_lock(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    assert state_dir.force_unlock() is None
    stale = {"pid": 999_999, "host": "gone.example", "since": "2026-01-01T00:00:00+00:00"}
    state_dir.lock_file.write_text(json.dumps(stale))
    assert state_dir.force_unlock() == stale
    assert not state_dir.lock_file.exists()
    with state_dir.locked():
        pass


def test_applied_files_read_a_mangled_artifact_as_it_is(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    state = State(serial=4)
    tree = state_dir.artifacts(4) / "Org"
    tree.mkdir(parents=True)
    (tree / "gal.json").write_text("{}\n")
    (tree / "gwart.txt").write_bytes(b"route \xff\n")
    assert state_dir.applied_files(state) == {
        "Org/gal.json": "{}\n",
        "Org/gwart.txt": "route \ufffd\n",
    }
