"""Group commit: the durable writes of many callers for the price of a few disk flushes.

A file written under a temporary name and renamed into a folder is durable once its data and
then its name are on disk. A caller hands the commit thread a `write` (the data, under its
temporary name) and a `publish` (the rename). The thread does a batch's writes, makes them
durable, does the batch's publishes, makes those durable, and only then answers every caller:
each hears back only once its file is durable, under its name.

A caller that finds its whole temporary files again when it next starts (the queue: see
MessageQueue.recover) says so with `recovered`: it is answered once its data is durable and
renamed, without the second flush. A power loss can then undo the rename, never the file.

Durable is syncfs(2) of the file system where Linux offers it: one flush for a whole batch,
where an fsync of each file and of each folder flushes the disk once each (measured: 15% more
SMTP messages a second). Elsewhere each write fsyncs its file (`FILES_NEED_FSYNC`) and each
folder is fsynced after the renames.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mailwright.runtime.durable.files import FILES_NEED_FSYNC, sync_folder

T = TypeVar("T")


@dataclass
class _Job:
    write: Callable[[], Any]
    folder: Path  # where `publish` renames into
    future: asyncio.Future[Any]
    publish: Callable[[Any], None]  # given what `write` returned, once that is durable
    recovered: bool  # the caller's recovery publishes a durable write: its name may wait
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(self) -> None:
        # A SimpleQueue's put and get are C; a Condition's waits and notifies are Python, and
        # the thread contended for its lock (py-spy: 9% of the host's loop time in a burst).
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    async def run(
        self,
        write: Callable[[], T],
        folder: Path,
        publish: Callable[[T], None],
        *,
        recovered: bool = False,
    ) -> T:
        """`write()` then `publish(result)` in the commit thread, as the module says; returns
        what `write` returned once both are durable (`recovered`: once the write is)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put(_Job(write, folder, future, publish, recovered))
        if self._thread is None:
            with self._starting:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name="commit", daemon=True)
                    self._thread.start()
        return await future

    def _serve(self) -> None:
        while True:
            batch = [self._jobs.get()]  # waits for the first; the rest are whatever came along
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._jobs.get_nowait())
            _commit(batch)


def _commit(batch: list[_Job]) -> None:
    for job in batch:
        try:
            job.result = job.write()
        except Exception as exc:  # the caller's own failure, raised in the caller
            job.error = exc
    folders = sorted({job.folder for job in batch})
    if not FILES_NEED_FSYNC:
        _durable(batch, folders)  # the data, before any name points at it
    for job in batch:
        if job.error is None:
            try:
                job.publish(job.result)
            except Exception as exc:
                job.error = exc
    # Without syncfs a file's name in its folder is durable only by that folder's fsync.
    named = [job for job in batch if not job.recovered or FILES_NEED_FSYNC]
    if named:
        _durable(named, sorted({job.folder for job in named}))
    for loop in {job.future.get_loop() for job in batch}:
        mine = [job for job in batch if job.future.get_loop() is loop]
        try:
            loop.call_soon_threadsafe(_answer, mine)  # one wake-up of each loop
        except RuntimeError:
            continue  # the loop was closed meanwhile: nobody waits any more


def _durable(batch: list[_Job], folders: list[Path]) -> None:
    """syncfs of each file system the folders are on, or an fsync of each folder. On failure
    nothing of the batch there is durable: each of its callers is told."""
    if not FILES_NEED_FSYNC:
        folders = list({_device(f): f for f in reversed(folders)}.values())
    for folder in folders:
        try:
            sync_folder(folder)
        except OSError as exc:
            device = _device(folder)
            for job in batch:
                if job.error is None and (job.folder == folder or _device(job.folder) == device):
                    job.error = exc


def _device(folder: Path) -> int:
    try:
        return os.stat(folder).st_dev
    except OSError:
        return -1


def _answer(batch: list[_Job]) -> None:
    for job in batch:
        if job.future.done():
            continue  # the caller was cancelled
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


# One commit thread for the process: every queue of the host shares it.
COMMIT = GroupCommit()
