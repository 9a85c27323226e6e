"""Group commit: durable writes of many callers, one fsync of each folder they renamed into.

A file renamed into a folder is durable once the file and then the folder are fsynced. Under
load many writers rename into the same folder (the queue); one thread does their writes one
after the other, then fsyncs each folder once for all of them, and only then answers every
caller. So each caller still hears back only after its file is durable, and a burst of writes
costs one folder fsync and one hand-off between threads instead of one each.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class _Job:
    work: Callable[[], Any]
    folder: Path
    future: asyncio.Future[Any]
    then: Callable[[Any], None] | None = None  # given the result, once `folder` is durable
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    def __init__(self) -> None:
        self._pending: list[_Job] = []
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    async def run(
        self, work: Callable[[], T], folder: Path, then: Callable[[T], None] | None = None
    ) -> T:
        """`work()` (which writes and fsyncs its file and renames it into `folder`, or appends
        to the file `folder`) in the commit thread; returns its result once `folder` was
        fsynced after it, and `then(result)` ran there (what may only follow durability)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._ready:
            self._pending.append(_Job(work, folder, future, then))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="commit", daemon=True)
                self._thread.start()
            self._ready.notify()
        return await future

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                batch, self._pending = self._pending, []
            _commit(batch)


def _commit(batch: list[_Job]) -> None:
    for job in batch:
        try:
            job.result = job.work()
        except Exception as exc:  # the caller's own failure, raised in the caller
            job.error = exc
    for folder in {job.folder for job in batch}:
        try:
            _fsync(folder)
        except OSError as exc:  # not durable: every write into it failed
            for job in batch:
                if job.folder == folder and job.error is None:
                    job.error = exc
    for job in batch:
        if job.then is not None and job.error is None:
            try:
                job.then(job.result)
            except Exception as exc:  # the caller's own failure, raised in the caller
                job.error = exc
    for loop in {job.future.get_loop() for job in batch}:
        mine = [job for job in batch if job.future.get_loop() is loop]
        try:
            loop.call_soon_threadsafe(_answer, mine)  # one wake-up of each loop
        except RuntimeError:
            continue  # the loop was closed meanwhile: nobody waits any more


def _answer(batch: list[_Job]) -> None:
    for job in batch:
        if job.future.done():
            continue  # the caller was cancelled
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


def _fsync(path: Path) -> None:
    """fsync a folder, or a file another descriptor appended to."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# One commit thread for the process: every queue of the host shares it.
COMMIT = GroupCommit()
