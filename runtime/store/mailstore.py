"""The Information Store: one Maildir per mailbox, delivery that survives a crash.

Delivery writes the message to tmp/, fsyncs it, renames it into new/ and fsyncs the folder;
only then does it return, so an acknowledged message is on disk. Each delivery carries the
internal message id and a mailbox takes one copy of an id: the id is in the file name, and once
the message is in place it is also appended (fsynced) to the mailbox's `delivered` log, which
remembers it after the user deleted the message. On first use the log is reconciled with the
Maildir, so a crash between the rename and the log entry still deduplicates (at-least-once
hand-offs, exactly-once mailboxes).

File names follow the Maildir convention with Dovecot's size fields: `<ns>.<uid>.mailwright,
S=<bytes on disk>,W=<bytes with CRLF line ends>`; messages are stored with LF line ends, as
Maildir readers expect, and POP3 serves them with CRLF (RFC 1939 §3).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mailwright.runtime.durable.commit import COMMIT
from mailwright.runtime.durable.files import (
    FILES_NEED_FSYNC,
    fsync_dir,
    write_new_file,
)
from mailwright.runtime.formats.message import InternalMessage
from mailwright.runtime.formats.render import to_rfc5322

_NAME = re.compile(r"^(?P<ns>\d+)\.(?P<uid>[0-9a-f]+)\.mailwright,S=(?P<s>\d+),W=(?P<w>\d+)")


class DeliveryError(Exception):
    """The mailbox will not take this message; the reason goes into a non-delivery report."""


class MailboxMovedError(Exception):
    """The mailbox is moving to another home or name: its mail waits in the queue meanwhile,
    and is routed again (to the new home) when it is next tried."""


# A message as Move Mailbox carries it: its Maildir folder (new or cur), its file name (which
# holds its UIDL, and its flags in cur/), and its bytes.
MovedMessage = tuple[str, str, bytes]


@dataclass(frozen=True)
class StoredMessage:
    path: Path
    uid: str  # persistent, unique in the mailbox: the POP3 UIDL (RFC 1939 §7)
    size: int  # octets as POP3 counts them, every line ending CRLF


def message_uid(message_id: str) -> str:
    return hashlib.sha256(message_id.encode("utf-8")).hexdigest()[:32]


def to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


class Mailbox:
    """One mailbox's Maildir and its delivered-ids log."""

    def __init__(self, root: Path, size_limit: int | None = None) -> None:
        self.root = root
        self.maildir = root / "Maildir"
        # Joined once: every delivery names them, and pathlib's joining costs more than that.
        self._new = self.maildir / "new"
        self._log = str(root / "delivered")
        self.size_limit = size_limit
        self._lock = threading.Lock()
        self._delivered: set[str] | None = None
        self.closed = False  # moving away: deliveries raise MailboxMovedError
        self._in_flight = 0  # deliveries and adoptions under way

    def _prepare(self) -> set[str]:
        if self._delivered is None:
            for sub in ("tmp", "new", "cur"):
                (self.maildir / sub).mkdir(parents=True, exist_ok=True)
            log = Path(self._log)
            logged = set(log.read_text(encoding="ascii").split()) if log.exists() else set()
            for message in self.messages():
                if message.uid not in logged:
                    self._record(message.uid)
                    logged.add(message.uid)
            self._delivered = logged
        return self._delivered

    def deliver(self, message_id: str, data: bytes) -> bool:
        """Store one message durably; False when this id was delivered here before."""
        with self._writing([message_uid(message_id)]):
            staged = self._write(message_id, data, sync=True)
            if staged is None:
                return False
            os.rename(*staged[1:])
            fsync_dir(self._new)
        self._record(staged[0])
        return True

    async def deliver_soon(self, message_id: str, render: Callable[[], bytes]) -> bool:
        """`deliver` through the group commit, for the event loop (rendering, `render()`, is
        part of the work). The id is logged once the message is durable in new/, as `deliver`
        does, but not fsynced: a log line lost in a crash is made again from the Maildir when
        the mailbox is next opened (_prepare)."""
        with self._writing([message_uid(message_id)]):
            staged = await COMMIT.run(
                lambda: self._write(message_id, render(), sync=FILES_NEED_FSYNC),
                self._new,
                lambda staged: None if staged is None else os.rename(*staged[1:]),
            )
        if staged is None:
            return False
        self._record(staged[0], sync=False)
        return True

    @contextlib.contextmanager
    def _writing(self, uids: Iterable[str]) -> Iterator[None]:
        """One delivery or adoption under way: a mailbox that is moving away takes none, and
        its move waits for those under way (see close). _write marks the id delivered at once
        (a second delivery meanwhile is a duplicate); if the message does not then become
        durable, it is not delivered after all."""
        with self._lock:
            if self.closed:
                raise MailboxMovedError(f"mailbox {self.root.name} is moving")
            self._in_flight += 1
        try:
            yield
        except BaseException:
            with self._lock:
                if self._delivered is not None:
                    self._delivered.difference_update(uids)
            raise
        finally:
            with self._lock:
                self._in_flight -= 1

    async def adopt_soon(self, moved: list[MovedMessage]) -> int:
        """Messages moved here from the mailbox's previous home or name (Move Mailbox), durably,
        each under its own file name in its own folder: its UIDL and flags stay. A message
        whose id this mailbox has taken before is not taken again, so a batch sent twice (the
        sender crashed before it forgot the batch) is taken once. Returns how many were new."""
        taken = 0
        for folder in ("new", "cur"):
            batch = [m for m in moved if m[0] == folder]
            staged: list[tuple[str, str, str]] = []
            if not batch:
                continue
            # Lazily: on failure, the ids of what was staged by then are not delivered.
            with self._writing(uid for uid, _, _ in staged):
                await COMMIT.run(
                    lambda: staged.extend(self._stage_moved(batch)),  # noqa: B023 - awaited here
                    self.maildir / folder,
                    lambda _: _rename_all(staged),  # noqa: B023
                )
            self._record_all([uid for uid, _, _ in staged])
            taken += len(staged)
        return taken

    def _stage_moved(self, batch: list[MovedMessage]) -> list[tuple[str, str, str]]:
        """The batch's new messages written into tmp/: (uid, that file, its final name)."""
        with self._lock:
            delivered = self._prepare()
            staged = []
            for folder, name, data in batch:
                match = _NAME.match(name)
                if match is None or "/" in name:
                    raise ValueError(f"{name!r} is not a message file name of this store")
                if match["uid"] in delivered:
                    continue
                temp = f"{self.maildir}/tmp/{name}"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)  # left by an earlier try that did not finish
                write_new_file(temp, data, sync=FILES_NEED_FSYNC)
                delivered.add(match["uid"])
                staged.append((match["uid"], temp, f"{self.maildir}/{folder}/{name}"))
            return staged

    def remember(self, uids: list[str]) -> None:
        """Ids delivered at the mailbox's previous home: a late second delivery of one (an
        at-least-once hand-off still under way) is a duplicate here too."""
        with self._lock:
            delivered = self._prepare()
            fresh = [uid for uid in uids if uid not in delivered]
            delivered.update(fresh)
        self._record_all(fresh)

    def delivered_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._prepare())

    def close(self) -> bool:
        """From now on deliveries here raise MailboxMovedError; True once none is under way
        (a message written but not yet renamed into place would be missed by a move)."""
        with self._lock:
            self.closed = True
            return self._in_flight == 0

    def reopen(self) -> None:
        """The mailbox is at home here again (moved back before its move away finished)."""
        with self._lock:
            self.closed = False

    def moved_away(self) -> bool:
        """Closed, nothing under way and no message left: its folder may go."""
        with self._lock:
            return self.closed and self._in_flight == 0 and not self.messages()

    def _write(self, message_id: str, data: bytes, *, sync: bool) -> tuple[str, str, str] | None:
        """The message written into tmp/: (uid, that file, its name in new/); None when this id
        was delivered here before."""
        with self._lock:
            delivered = self._prepare()
            uid = message_uid(message_id)
            if uid in delivered:
                return None
            body = to_lf(data)
            if self.size_limit is not None and self.used() + len(body) > self.size_limit:
                raise DeliveryError(
                    f"mailbox {self.root.name} is full ({self.used()} of {self.size_limit} bytes)"
                )
            # POP3 ends every line with CRLF, the last one too even if the message has none.
            wire_size = len(body) + body.count(b"\n") + (2 if body[-1:] not in (b"", b"\n") else 0)
            name = f"{time.time_ns()}.{uid}.mailwright,S={len(body)},W={wire_size}"
            temp = f"{self.maildir}/tmp/{name}"
            write_new_file(temp, body, sync=sync)
            delivered.add(uid)  # a second delivery of the id from now on is a duplicate
            return uid, temp, f"{self.maildir}/new/{name}"

    def delete(self, messages: list[StoredMessage]) -> None:
        """Remove messages for good (POP3's UPDATE state); their ids stay delivered."""
        with self._lock:
            self._prepare()
            for message in messages:
                message.path.unlink(missing_ok=True)
            fsync_dir(self.maildir / "new")
            fsync_dir(self.maildir / "cur")

    async def deliver_message(
        self, message: InternalMessage, *, uuencoded: bool, charset: str
    ) -> bool:
        """A message created inside the organization, rendered as the mailbox's POP3 settings
        say (MIME or UUENCODE, its character set); one from the internet as it arrived."""
        return await self.deliver_soon(
            message.message_id,
            lambda: to_rfc5322(message, uuencoded=uuencoded, charset=charset),
        )

    def _record(self, uid: str, *, sync: bool = True) -> None:
        self._record_all([uid], sync=sync)

    def _record_all(self, uids: list[str], *, sync: bool = True) -> None:
        if not uids:
            return
        # O_APPEND: one write of whole lines at the end, whoever else appends.
        fd = os.open(self._log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(f"{uid}\n" for uid in uids).encode("ascii"))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def used(self) -> int:
        return sum(m.size for m in self.messages())

    def messages(self) -> list[StoredMessage]:
        """The maildrop in delivery order."""
        found = []
        for sub in ("new", "cur"):
            folder = self.maildir / sub
            for entry in os.scandir(folder) if folder.is_dir() else ():
                if match := _NAME.match(entry.name):
                    found.append(
                        (
                            int(match["ns"]),
                            StoredMessage(Path(entry.path), match["uid"], int(match["w"])),
                        )
                    )
        return [message for _, message in sorted(found, key=lambda pair: (pair[0], pair[1].uid))]


def _rename_all(staged: list[tuple[str, str, str]]) -> None:
    for _, temp, final in staged:
        os.rename(temp, final)


class MailStore:
    """All mailboxes of one host: `<state>/hosts/<server>/store/<alias>/Maildir`."""

    def __init__(self, root: Path, size_limits: dict[str, int | None] | None = None) -> None:
        self.root = root
        self._limits = size_limits or {}
        self._mailboxes: dict[str, Mailbox] = {}
        self._lock = threading.Lock()
        self.locked: set[str] = set()  # maildrops a POP3 session holds: not moved meanwhile

    def mailbox(self, alias: str) -> Mailbox:
        with self._lock:
            return self._mailbox(alias)

    def _mailbox(self, alias: str) -> Mailbox:
        if alias not in self._mailboxes:
            self._mailboxes[alias] = Mailbox(self.root / alias, self._limits.get(alias))
        return self._mailboxes[alias]

    def deliver(self, alias: str, message_id: str, data: bytes) -> bool:
        return self.mailbox(alias).deliver(message_id, data)

    def follow(self, limits: dict[str, int | None]) -> None:
        """A reloaded config's size limits, for the next deliveries. A mailbox that left the
        host and whose folder went to retained/ is forgotten: if it comes back it starts afresh
        instead of writing into that folder through what this store remembered of it. One
        whose folder is still here is moving away: the mover holds it until the folder is
        empty and gone (one object a mailbox, so that none delivers past the move)."""
        with self._lock:
            self._limits = limits
            for alias in self._mailboxes.keys() - limits.keys():
                if not (self.root / alias).exists():
                    del self._mailboxes[alias]
            for alias, mailbox in self._mailboxes.items():
                mailbox.size_limit = limits.get(alias)

    def folders(self) -> list[str]:
        """The aliases this store holds mail of (a folder each)."""
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())

    def rename(self, old: str, new: str) -> bool:
        """A renamed mailbox's folder (closed, nothing under way) becomes the new alias's in one
        rename, unless the new alias has a folder already (then False: its messages join it
        one by one)."""
        with self._lock:
            if (self.root / new).exists():
                return False
            self._mailboxes.pop(old, None)
            os.rename(self.root / old, self.root / new)
            fsync_dir(self.root)
            return True

    def discard(self, alias: str) -> bool:
        """The folder of a mailbox whose mail has all gone to its new home or name; False
        (and kept) when mail came back meanwhile (it moved back here)."""
        with self._lock:
            if not self._mailbox(alias).moved_away():
                return False
            self._mailboxes.pop(alias)
            shutil.rmtree(self.root / alias)
            fsync_dir(self.root)
            return True

    def reopen(self, alias: str) -> None:
        with self._lock:
            if (mailbox := self._mailboxes.get(alias)) is not None:
                mailbox.reopen()
