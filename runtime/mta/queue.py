"""The MTA's durable queue: one file per message, written before anyone is told it is taken.

An entry is written to a temporary file, made durable and renamed into place; only then is
the hand-off acknowledged (to the submitting client, the previous MTA, or through the IMS with
SMTP 250). Updates (recipients done, retry times) replace the file the same way. A power loss
may undo a rename that was not flushed yet, never the durable file: on start the host first
publishes every whole temporary entry (`recover`), then the MTA reads every entry back and
resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from mailwright.runtime.durable.commit import COMMIT
from mailwright.runtime.durable.files import (
    FILES_NEED_FSYNC,
    fsync_dir,
    overwrite_file,
    read_file,
    write_new_file,
)
from mailwright.runtime.formats.message import Address, InternalMessage, decode, encode
from mailwright.runtime.store.mailstore import message_uid

QUEUE_FORMAT_VERSION = 1
BLANKS_KEPT = 4096


@dataclass(frozen=True)
class PendingRecipient:
    address: Address
    attempts: int = 0
    next_try: float = 0.0  # time.time() before which it is not retried
    last_error: str = ""


@dataclass(frozen=True)
class QueueEntry:
    # The message id and the recipients it came for: a second hand-off of the same message for
    # the same recipients is the same entry (de-duplication), another recipient set is not.
    id: str
    message: InternalMessage
    pending: tuple[PendingRecipient, ...]
    received_from: str = ""  # the client or server that handed it over
    first_seen: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def new(cls, message: InternalMessage, recipients: list[Address], source: str) -> QueueEntry:
        wanted = sorted(f"{r.type}:{r.address.casefold()}" for r in recipients)
        key = message_uid(message.message_id + "|" + ",".join(wanted))
        pending = tuple(PendingRecipient(r) for r in recipients)
        return cls(key, message, pending, source, time.time())


class MessageQueue:
    def __init__(self, root: Path) -> None:
        self.root = root
        # The files of removed entries, kept (up to BLANKS_KEPT) to be written again: on ext4,
        # files created after many deletions search past the deleted inodes (measured: an
        # eighth of a host's CPU under load); an entry written into a blank creates none. The
        # pool is shared by the processes of one host (its IMS workers queue, it removes).
        self.blanks = root / "blank"
        self.blanks.mkdir(parents=True, exist_ok=True)
        self._pool: list[str] = []
        self._looked = -1.0  # when blank/ was last listed (time.monotonic)
        self._look(0.0)

    def path(self, entry_id: str) -> str:
        # A string, not a Path: the queue names a few files a message, and pathlib's joining
        # and parsing cost more than the system calls they name them for.
        return f"{self.root}/{entry_id}.msg"

    def put(self, entry: QueueEntry) -> bool:
        """Durably queue `entry`; False when the same message is queued already (a redelivery)."""
        if os.path.exists(self.path(entry.id)):
            return False
        self.write(entry)
        return True

    def write(self, entry: QueueEntry) -> None:
        """Write `entry` in place of its older version, if any, atomically and durably."""
        self._publish(entry, self._write(entry, sync=True))
        fsync_dir(self.root)

    def remove(self, entry: QueueEntry) -> None:
        """Not fsynced, and so not handed to the commit thread: a removal that a power loss
        undoes only hands the entry over once more, and every taker de-duplicates it (the
        store by message id, a peer MTA by entry id). A process that dies keeps it done."""
        self._recycle(self.path(entry.id))

    # The first two for the event loop, through the group commit.

    async def put_soon(self, entry: QueueEntry) -> bool:
        if os.path.exists(self.path(entry.id)):
            return False
        await self.write_soon(entry)
        return True

    async def write_soon(self, entry: QueueEntry) -> None:
        await COMMIT.run(
            lambda: self._write(entry, sync=FILES_NEED_FSYNC),
            self.root,
            lambda temp: self._publish(entry, temp),
            recovered=True,
        )

    def recover(self) -> list[str]:
        """At start, before anything is queued: publish each temporary file that holds a whole
        entry of its own id, when no entry has that id (its answer may have gone out, and a
        power loss undone its rename); any other is a blank again. The ids published."""
        published = []
        for temp in sorted(self.root.glob(".*.tmp")):
            entry_id = temp.name[1:].partition(".")[0]
            if not os.path.exists(self.path(entry_id)) and _whole(temp, entry_id):
                os.replace(temp, self.path(entry_id))
                published.append(entry_id)
            else:
                self._recycle(str(temp))
        if published:
            fsync_dir(self.root)
        return published

    def _write(self, entry: QueueEntry, *, sync: bool) -> str:
        """The entry's file under a temporary name (a blank's, if one is left)."""
        temp = f"{self.root}/.{entry.id}.{uuid.uuid4().hex}.tmp"  # writers never share one
        if self._take_blank(temp):
            overwrite_file(temp, _encode(entry), sync=sync)
        else:
            write_new_file(temp, _encode(entry), sync=sync)
        return temp

    def _publish(self, entry: QueueEntry, temp: str) -> None:
        os.replace(temp, self.path(entry.id))

    def _recycle(self, path: str) -> None:
        """The file at `path` becomes a blank, or is deleted when the pool is full."""
        if len(self._pool) >= BLANKS_KEPT:
            self._look(1.0)  # others may have taken some
        with contextlib.suppress(FileNotFoundError):
            if len(self._pool) >= BLANKS_KEPT:
                os.unlink(path)
                return
            blank = uuid.uuid4().hex
            os.rename(path, f"{self.blanks}/{blank}")
            self._pool.append(blank)

    def _take_blank(self, temp: str) -> bool:
        """Rename a blank to `temp`; False when there is none (another process may have taken
        a listed one first: then the next)."""
        if not self._pool:
            self._look(0.2)
        while self._pool:
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{self.blanks}/{self._pool.pop()}", temp)
                return True
        return False

    def _look(self, interval: float) -> None:
        """List blank/ again, unless it was listed less than `interval` seconds ago."""
        now = time.monotonic()
        if now - self._looked >= interval:
            self._pool = [entry.name for entry in os.scandir(self.blanks)]
            self._looked = now

    def read(self, entry_id: str) -> QueueEntry | None:
        """One queued entry, or None when it is not (or no longer) queued."""
        try:
            return _read(self.path(entry_id))
        except FileNotFoundError:
            return None

    def entries(self) -> list[QueueEntry]:
        """Every queued message, oldest first (a crashed write leaves only a .tmp, ignored)."""
        found = [_read(p) for p in self.root.glob("*.msg")]
        return sorted(found, key=lambda e: (e.first_seen, e.id))

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("*.msg"))


async def sleep_until_due(entries: Iterable[QueueEntry], wakeup: asyncio.Event) -> None:
    """Until the first of the entries' recipients is due again, or `wakeup` is set."""
    due = [p.next_try for e in entries for p in e.pending]
    delay = max(0.05, min(due) - time.time()) if due else None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wakeup.wait(), delay)


def _encode(entry: QueueEntry) -> bytes:
    """The entry as a CBOR document, then the document's CRC-32 (4 octets, big-endian): it
    tells a whole entry from a torn one when a temporary file is recovered. A reader of the
    document stops at its end (cbor2.loads decodes one item)."""
    document = cbor2.dumps(
        {
            "v": QUEUE_FORMAT_VERSION,
            "id": entry.id,
            "message": encode(entry.message),
            "pending": [
                {
                    "addr": p.address.address,
                    "name": p.address.display_name,
                    "type": p.address.type,
                    "attempts": p.attempts,
                    "next": p.next_try,
                    "error": p.last_error,
                }
                for p in entry.pending
            ],
            "from": entry.received_from,
            "first": entry.first_seen,
            "meta": entry.meta,
        }
    )
    return document + zlib.crc32(document).to_bytes(4, "big")


def _whole(path: Path, entry_id: str) -> bool:
    """Whether the file is all of an entry with this id: a crash may have left it torn, or
    still holding the removed entry whose blank it was."""
    data = read_file(str(path))
    if data[-4:] != zlib.crc32(data[:-4]).to_bytes(4, "big"):
        return False
    try:
        return bool(cbor2.loads(data)["id"] == entry_id)
    except Exception:  # whatever odd bytes with a right CRC make the decoder raise
        return False


def _read(path: str | Path) -> QueueEntry:
    document = cbor2.loads(read_file(str(path)))
    pending = tuple(
        PendingRecipient(
            Address(p["addr"], p["name"], p["type"]), p["attempts"], p["next"], p["error"]
        )
        for p in document["pending"]
    )
    message = decode(document["message"])
    return QueueEntry(
        document["id"], message, pending, document["from"], document["first"], document["meta"]
    )
