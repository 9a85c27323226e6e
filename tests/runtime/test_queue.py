"""The MTA's queue on disk: entries survive a new reader, and removed entries' files are a
bounded pool that every process of the host reuses."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest

from mailwright.runtime.formats.message import Address, InternalMessage, Recipient
from mailwright.runtime.mta import queue as queue_module
from mailwright.runtime.mta.queue import MessageQueue, QueueEntry


def _entry(n: int) -> QueueEntry:
    message = InternalMessage(
        message_id=f"<{n}@example.org>",
        sender=Address("a@example.org"),
        recipients=(Recipient(Address("b@example.org"), "to"),),
        subject=f"entry {n}",
        submit_time=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        body_text="x" * 2000,
    )
    return QueueEntry.new(message, [Address("b@example.org")], "test")


def _inodes(folder: Path) -> set[int]:
    return {p.stat().st_ino for p in folder.iterdir() if p.is_file()}


def test_another_process_reuses_what_one_removed(tmp_path: Path) -> None:
    host, worker = MessageQueue(tmp_path), MessageQueue(tmp_path)  # two processes' views
    entries = [_entry(n) for n in range(5)]
    for entry in entries:
        assert worker.put(entry)
    assert {e.id for e in host.entries()} == {e.id for e in entries}
    for entry in entries:
        host.remove(entry)
    blanks = _inodes(host.blanks)
    assert len(blanks) == 5 and not host.entries()
    again = [_entry(n) for n in range(5, 10)]
    time.sleep(0.3)  # a process lists blank/ again at most every 0.2 s
    for entry in again:
        worker.put(entry)
    assert {os.stat(host.path(e.id)).st_ino for e in again} == blanks
    assert not any(host.blanks.iterdir())
    assert sorted(e.message.subject for e in host.entries()) == [f"entry {n}" for n in range(5, 10)]


def test_the_pool_of_blanks_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_module, "BLANKS_KEPT", 3)
    queue = MessageQueue(tmp_path)
    entries = [_entry(n) for n in range(8)]
    for entry in entries:
        queue.put(entry)
    for entry in entries:
        queue.remove(entry)
    assert len(os.listdir(queue.blanks)) == 3
    assert not queue.entries()
    for entry in entries:
        assert queue.put(entry)  # the same ids again: not duplicates, they were removed
    assert len(queue.entries()) == 8
    assert stat_modes(tmp_path) == {0o600}


def stat_modes(folder: Path) -> set[int]:
    """Queue files hold mail: readable by their owner only."""
    return {p.stat().st_mode & 0o777 for p in folder.glob("*.msg")}


# --- recovery: an answer may go out before a rename is flushed -----------------------------


def _temporary(queue: MessageQueue, entry: QueueEntry) -> Path:
    """The entry written and made durable under its temporary name, its rename lost (as a
    power loss can lose it)."""
    return Path(queue._write(entry, sync=True))


def test_a_whole_temporary_entry_is_published_at_start(tmp_path: Path) -> None:
    entry = _entry(1)
    _temporary(MessageQueue(tmp_path), entry)
    restarted = MessageQueue(tmp_path)
    assert restarted.recover() == [entry.id]
    assert [e.message.subject for e in restarted.entries()] == ["entry 1"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_torn_or_stale_temporary_file_is_a_blank_again(tmp_path: Path) -> None:
    queue = MessageQueue(tmp_path)
    torn = _temporary(queue, _entry(1))
    whole = torn.read_bytes()
    torn.write_bytes(whole[: len(whole) // 2])  # its end never written
    stale = _temporary(queue, _entry(2))
    # A blank renamed to its temporary name and still holding the entry removed from it.
    stale.write_bytes(_temporary(queue, _entry(3)).read_bytes())
    flipped = _temporary(queue, _entry(4))
    data = bytearray(flipped.read_bytes())
    data[data.index(b"xxxxxxxx")] = ord("y")  # a block holding what was not written
    flipped.write_bytes(bytes(data))
    restarted = MessageQueue(tmp_path)
    assert restarted.recover() == [_entry(3).id]
    assert [e.message.subject for e in restarted.entries()] == ["entry 3"]
    assert len(os.listdir(restarted.blanks)) == 3


def test_a_temporary_file_of_a_queued_entry_is_not_published(tmp_path: Path) -> None:
    queue = MessageQueue(tmp_path)
    entry = _entry(1)
    queue.put(entry)
    _temporary(queue, QueueEntry(entry.id, entry.message, (), "an older version"))
    restarted = MessageQueue(tmp_path)
    assert restarted.recover() == []
    (kept,) = restarted.entries()
    assert kept.received_from == "test" and len(kept.pending) == 1
