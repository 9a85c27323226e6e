"""The state directory: what is applied, written atomically, guarded by a lock.

Layout (default `.mailwright/`):
  state.json             serial, lineage, the applied manifests, host loopback addresses
  artifacts/<serial>/    the applied artifact tree (DIR/<org>/... as `compile` writes it)
  lock                   who is applying: pid, host, since
  retained/              the stores of mailboxes removed from the spec, until `purge`

Writes go to a temporary file that is fsynced and renamed over the old one, so a crash at any
point leaves the previous state readable; the artifact tree of a new serial is complete and
durable on disk (one syncfs, see write_tree_durably) before state.json names it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailwright.runtime.durable.files import (
    FILES_NEED_FSYNC,
    fsync_dir,
    syncfs,
    write_atomic,
)

STATE_FORMAT_VERSION = 1
_KINDS: dict[type, str] = {int: "a whole number", str: "a string", dict: "a JSON object"}
DEFAULT_STATE_DIR = ".mailwright"


class StateError(Exception):
    """The state directory cannot be used as asked; the message says why and what to do."""


class LockedError(StateError):
    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.holder = holder
        unlock = f"`mailwright force-unlock --state {path.parent}`"
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int) or not isinstance(host, str):
            why = f"{path} is not a lock mailwright wrote; if no apply runs, run {unlock}"
        elif host == socket.gethostname() and not _alive(pid):
            why = f"{path} was left by pid {pid}, which is no longer running; run {unlock}"
        else:
            why = (
                f"state {path.parent} is locked by pid {pid} on {host} since "
                f"{holder.get('since')}; wait for it, or run {unlock} if that process is gone"
            )
        super().__init__(why)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, as another user's process
    return True


Progress = Callable[[int, int], None]  # (done, in all)


def write_tree_durably(root: Path, files: dict[str, str], progress: Progress | None = None) -> None:
    """Every file written and durable, its folders too, before anyone points at it: one
    syncfs of the file system after all the writes (a first apply of 100,000 mailboxes writes
    a thousand host configs: a disk flush each was most of its time), or where there is no
    syncfs an fsync of each file and then of each folder."""
    root.mkdir(parents=True, exist_ok=True)
    # Opened before the writes: syncfs reports the write-back errors seen since (Linux 5.8).
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        folders = _write_tree(root, files, progress)
        if FILES_NEED_FSYNC:
            for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
                fsync_dir(folder)
            fsync_dir(root.parent)  # root's own name
        else:
            syncfs(fd, root)
    finally:
        os.close(fd)


def _write_tree(root: Path, files: dict[str, str], progress: Progress | None) -> set[Path]:
    """Write the files (each fsynced when there is no syncfs); the folders written into."""
    folders = {root}
    for done, (name, text) in enumerate(files.items(), 1):
        path = root / name
        if path.parent not in folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            folders.update(p for p in path.parents if p.is_relative_to(root))
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            if FILES_NEED_FSYNC:
                handle.flush()
                os.fsync(handle.fileno())
        if progress is not None:
            progress(done, len(files))
    return folders


@dataclass
class State:
    serial: int = 0
    lineage: str = field(default_factory=lambda: str(uuid.uuid4()))
    # organization -> its manifest.json as applied (artifact hashes, zone serials, sources)
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "<org>/<server>" -> loopback address, stable across applies
    host_addresses: dict[str, str] = field(default_factory=dict)
    # "<org>/<artifact>" -> [size, mtime in ns] of the applied file, as written: a file that
    # still has both is not read again to look for drift (as git's index does)
    fingerprints: dict[str, list[int]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "format_version": STATE_FORMAT_VERSION,
            "serial": self.serial,
            "lineage": self.lineage,
            "applied": self.applied,
            "host_addresses": self.host_addresses,
            "fingerprints": self.fingerprints,
        }

    @classmethod
    def from_json(cls, data: Any, where: Path | str = "state.json") -> State:
        """Checked as strictly as a spec: a state file that lies (a serial of -4, of "1", of
        null) must not turn into "everything drifted" or a traceback."""
        if not isinstance(data, dict):
            raise StateError(f"{where} is not a mailwright state: not a JSON object")
        version = data.get("format_version")
        if version != STATE_FORMAT_VERSION:
            raise StateError(f"state format version {version} is not one this mailwright reads")
        expected = {"serial": int, "lineage": str, "applied": dict, "host_addresses": dict}
        for key, kind in expected.items():
            value = data.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise StateError(f"{where}: `{key}` must be {_KINDS[kind]}, not {value!r}")
        if data["serial"] < 0:
            raise StateError(f"{where}: `serial` must be 0 or more, not {data['serial']}")
        return cls(
            data["serial"],
            data["lineage"],
            data["applied"],
            data["host_addresses"],
            data.get("fingerprints", {}),  # none in a state an older release wrote
        )

    def zone_serials(self, organization: str) -> dict[str, tuple[str, int]]:
        zones = self.applied.get(organization, {}).get("zones", {})
        return {origin: (z["content_hash"], int(z["serial"])) for origin, z in zones.items()}


class AppliedTree(Mapping[str, str]):
    """Path -> text of an applied tree, each file read when first asked for."""

    def __init__(self, root: Path, paths: list[str], known: Mapping[str, str]) -> None:
        self.root = root
        self._paths = paths
        self._texts = dict(known)

    def __getitem__(self, name: str) -> str:
        if name not in self._texts:
            if name not in self._paths:
                raise KeyError(name)
            # errors="replace": a file mangled on disk is drift to restore, not a failure.
            self._texts[name] = (self.root / name).read_text(encoding="utf-8", errors="replace")
        return self._texts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def _unchanged(root: Path, state: State, new: Mapping[str, str]) -> dict[str, str]:
    """The files of the new tree that are on disk as applied (same size and mtime as apply
    wrote them) with the digest the new tree's manifest gives them."""
    found = {}
    for organization, manifest in state.applied.items():
        fresh = json.loads(new.get(f"{organization}/manifest.json", "{}")).get("artifacts", {})
        for name, digest in manifest.get("artifacts", {}).items():
            path = f"{organization}/{name}"
            recorded = state.fingerprints.get(path)
            if recorded is None or fresh.get(name) != digest or path not in new:
                continue
            with contextlib.suppress(OSError):
                stat = (root / path).stat()
                if [stat.st_size, stat.st_mtime_ns] == recorded:
                    found[path] = new[path]
    return found


def fingerprints(root: Path, names: Iterable[str]) -> dict[str, list[int]]:
    return {n: [(s := (root / n).stat()).st_size, s.st_mtime_ns] for n in sorted(names)}


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.path / "lock"

    def artifacts(self, serial: int) -> Path:
        return self.path / "artifacts" / str(serial)

    @property
    def retained(self) -> Path:
        return self.path / "retained"

    @property
    def import_cache(self) -> Path:
        """CSV imports that loaded cleanly, so that a plan re-reads only changed files."""
        return self.path / "cache" / "imports"

    def store(self, server: str, alias: str) -> Path:
        return self.path / "hosts" / server / "store" / alias

    def read(self) -> State:
        if self.path.exists() and not self.path.is_dir():
            raise StateError(f"{self.path} is a file, not a state directory (see --state)")
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise StateError(f"cannot read {self.state_file}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise StateError(f"cannot read {self.state_file}: {exc}") from None
        return State.from_json(data, self.state_file)

    def write(self, state: State) -> None:
        text = json.dumps(state.as_json(), indent=2, sort_keys=True) + "\n"
        write_atomic(self.state_file, text.encode())

    def applied_files(self, state: State, new: Mapping[str, str] | None = None) -> AppliedTree:
        """The applied artifact tree as on disk now (drift included): path -> text. Given the
        `new` tree, a file still as applied whose applied digest is the new one's is not read:
        its text is the new tree's, byte for byte."""
        root = self.artifacts(state.serial)
        if state.serial == 0 or not root.is_dir():
            return AppliedTree(root, [], {})
        paths = [str(p.relative_to(root)) for p in sorted(root.rglob("*")) if p.is_file()]
        return AppliedTree(root, paths, _unchanged(root, state, new or {}))

    @contextmanager
    def locked(self, timeout: float = 0.0) -> Iterator[None]:
        """Hold the lock; wait up to `timeout` seconds for another holder to let go."""
        self.path.mkdir(parents=True, exist_ok=True)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                if time.monotonic() >= deadline:
                    raise LockedError(self.lock_file, self.lock_holder()) from None
                time.sleep(0.1)
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
        try:
            yield
        finally:
            self.lock_file.unlink(missing_ok=True)

    def lock_holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.lock_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def force_unlock(self) -> dict[str, Any] | None:
        """Remove a stale lock; returns who held it, or None when there was none."""
        if not self.lock_file.exists():
            return None
        holder = self.lock_holder()
        self.lock_file.unlink(missing_ok=True)
        return holder
