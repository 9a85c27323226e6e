"""The group commit: callers hear back only once their files are in place, and each hears its
own failure; with syncfs(2), and with the fsync of each file and folder where it is missing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from mailwright.runtime.durable import commit, files
from mailwright.runtime.durable.commit import GroupCommit
from mailwright.runtime.durable.files import write_new_file
from mailwright.runtime.store.mailstore import Mailbox


@pytest.fixture(params=["syncfs", "fsync"])
def group(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> GroupCommit:
    if request.param == "fsync":
        monkeypatch.setattr(files, "_SYNCFS", None)
        monkeypatch.setattr(files, "FILES_NEED_FSYNC", True)
        monkeypatch.setattr(commit, "FILES_NEED_FSYNC", True)
    elif files.FILES_NEED_FSYNC:
        pytest.skip("no syncfs(2) on this platform")
    return GroupCommit()


def _writer(folder: Path, n: int) -> tuple[str, str]:
    temp = str(folder / f".{n}.tmp")
    write_new_file(temp, f"file {n}".encode(), sync=files.FILES_NEED_FSYNC)
    return temp, str(folder / f"{n}.msg")


async def _burst(group: GroupCommit, folder: Path, count: int) -> list[object]:
    async def one(n: int) -> object:
        if n == 3:
            raise_in = group.run(lambda: 1 // 0, folder, lambda _: None)
            return await raise_in
        staged = await group.run(
            lambda: _writer(folder, n), folder, lambda paths: os.rename(*paths)
        )
        # Answered: the file is there under its name, with its content.
        return (folder / f"{n}.msg").read_bytes() == f"file {n}".encode() and staged

    return await asyncio.gather(*(one(n) for n in range(count)), return_exceptions=True)


def test_each_caller_hears_back_once_its_file_is_in_place(
    group: GroupCommit, tmp_path: Path
) -> None:
    results = asyncio.run(_burst(group, tmp_path, 40))
    assert isinstance(results.pop(3), ZeroDivisionError)  # its own failure, no one else's
    assert all(results)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.msg" for n in range(40) if n != 3
    )


def test_a_failed_publish_is_the_callers_error(group: GroupCommit, tmp_path: Path) -> None:
    async def run() -> None:
        await group.run(lambda: "x", tmp_path, lambda _: os.rename(tmp_path / "no", tmp_path / "y"))

    with pytest.raises(FileNotFoundError):
        asyncio.run(run())


def test_a_delivery_that_did_not_land_is_not_a_duplicate_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox = Mailbox(tmp_path / "mark")
    real_rename = os.rename

    def broken(*paths: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "rename", broken)
    with pytest.raises(OSError, match="Input/output"):
        asyncio.run(mailbox.deliver_soon("<1@example.org>", lambda: b"Subject: x\r\n\r\nbody\r\n"))
    monkeypatch.setattr(os, "rename", real_rename)
    assert asyncio.run(mailbox.deliver_soon("<1@example.org>", lambda: b"Subject: x\r\n\r\nb\r\n"))
    assert len(mailbox.messages()) == 1


@pytest.mark.parametrize("recovered", [False, True])
def test_a_recovered_callers_name_is_not_waited_for_with_syncfs(
    group: GroupCommit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recovered: bool
) -> None:
    """The data is always durable before the rename. The rename is flushed before the answer
    unless the caller recovers whole temporary files (or only fsync makes a name durable)."""
    steps: list[str] = []
    durable = commit._durable

    def flush(*args: Any) -> None:
        steps.append("flush")
        durable(*args)

    monkeypatch.setattr(commit, "_durable", flush)

    async def one() -> None:
        await group.run(
            lambda: steps.append("write"),
            tmp_path,
            lambda _: steps.append("publish"),
            recovered=recovered,
        )
        steps.append("answer")

    asyncio.run(one())
    if files._SYNCFS is None:  # the fsync of each file is the write's: one flush, the folder
        assert steps == ["write", "publish", "flush", "answer"]
    elif recovered:
        assert steps == ["write", "flush", "publish", "answer"]
    else:
        assert steps == ["write", "flush", "publish", "flush", "answer"]
