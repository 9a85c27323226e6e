"""Durable file primitives: fsync of files and folders, syncfs(2) of a whole file system, new
files written whole, atomic replacement. Standard library only: the compiler's state
directory (compiler/state.py) and the hosts' queues and stores share them.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

# syncfs flushes whatever else is dirty on the file system too: where the state directory
# shares one with heavy writers of other data, MAILWRIGHT_SYNC=fsync keeps to fsync.
_SYNCFS: Any = (
    None
    if os.environ.get("MAILWRIGHT_SYNC") == "fsync"
    else getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
)
# Without syncfs each file is fsynced as it is written, and each folder after its renames.
FILES_NEED_FSYNC = _SYNCFS is None


def sync_folder(folder: Path) -> None:
    """What was written and renamed into `folder` made durable: syncfs of its file system
    (one flush for everything written there), or an fsync of the folder itself."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS is None:
            os.fsync(fd)
        else:
            syncfs(fd, folder)
    finally:
        os.close(fd)


def syncfs(fd: int, where: Path) -> None:
    """syncfs(2) of the file system `fd` (opened on `where`) is on. It reports the write-back
    errors seen since `fd` was opened (Linux 5.8), so open it before the writes."""
    if _SYNCFS(fd) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), str(where))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file in the same folder (created with `mode`), fsync, rename over, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    _write(fd, data, sync=True)
    os.replace(temp, path)
    fsync_dir(path.parent)


def write_new_file(path: str, data: bytes, *, sync: bool = True) -> None:
    """A new file with `data`, fsynced unless the caller's group commit makes it durable.
    Plain descriptors: Python's file objects add a seek, a terminal check and a stat to every
    open, and the queue and the store open one a message."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    _write(os.open(path, flags, 0o600), data, sync=sync)


def overwrite_file(path: str, data: bytes, *, sync: bool = True) -> None:
    """An existing file's content replaced by `data`, in place (its inode kept)."""
    _write(os.open(path, os.O_WRONLY | os.O_CLOEXEC), data, sync=sync, truncate=True)


def _write(fd: int, data: bytes, *, sync: bool, truncate: bool = False) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if truncate:
            os.ftruncate(fd, len(data))
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
