"""Move Mailbox: every mailbox's mail goes where the GAL homes it, under the alias it has now.

At start and after each reload a store host looks at the folders of its store (one per alias).
A folder whose mailbox the GAL homes on another server now is moved there over the transfer
protocol: MOVE frames of a batch of messages each, under their own file names, so that their
POP3 UIDLs and their Maildir flags stay. A batch leaves this store only once the new home
answered 250, which it does once the batch is durable there; and a mailbox takes a message id
once, so a batch sent twice (this host died before it forgot the batch) is taken once. Last go
the ids the mailbox was ever delivered (a late duplicate delivery is refused at the new home
too), then the empty folder. A kill -9 of either host at any point leaves every message in one
of the two stores, and the move resumes by itself at the next start or reload.

A folder of a renamed mailbox (its old alias in `previous_aliases`) becomes the new alias's:
one rename of the folder, or message by message the same way when the new alias has mail
already. A folder the GAL knows no owner of is a removed mailbox's, which `apply` retains.

While a mailbox moves its deliveries here wait in the queue (MailboxMovedError), to be routed
again to the new home; a maildrop that a POP3 session holds is moved once the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from mailwright.runtime.durable.files import read_file
from mailwright.runtime.mta.transfer import Endpoint, TransferError, send_frame
from mailwright.runtime.store.mailstore import MailStore, MovedMessage, StoredMessage
from mailwright.runtime.tls import ClientTls

log = logging.getLogger("mailwright.mta")

BATCH_MESSAGES = 100
BATCH_BYTES = 16 * 1024 * 1024
RETRY_AFTER = 2.0  # seconds, while a new home is down or a maildrop is in use

Owner = Callable[[str], tuple[str, str] | None]  # alias -> (its alias now, its home server)
Sink = Callable[[dict[str, Any]], Awaitable[object]]  # takes one MOVE document


class MailboxMover:
    def __init__(
        self,
        store: MailStore,
        server: str,
        owner: Owner,
        endpoints: Endpoint,
        tls: Callable[[str], ClientTls | None] = lambda _: None,
    ) -> None:
        self.store = store
        self.server = server
        self.owner = owner  # read at every sweep: a reload swaps the GAL behind it
        self.endpoints = endpoints
        self.tls = tls  # the mutual TLS to a new home (MOVE is the organization's alone)
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """The GAL changed: look again."""
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            self._wakeup.clear()
            unfinished = await self.sweep()
            timeout = RETRY_AFTER if unfinished else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def sweep(self) -> bool:
        """One look at every folder; True while some mail is not where it belongs yet."""
        unfinished = False
        for folder in self.store.folders():
            owner = self.owner(folder)
            if owner == (folder, self.server):
                self.store.reopen(folder)  # at home (again, if it was moving away)
                continue
            if owner is None:
                continue  # a removed mailbox's: apply retains it
            if folder in self.store.locked:
                unfinished = True
                continue
            try:
                await self._move(folder, *owner)
            except (TransferError, OSError) as exc:
                log.warning("move: %s -> %s on %s: %s", folder, owner[0], owner[1], exc)
                unfinished = True
            except Exception:  # one mailbox's trouble must stop neither the others nor the MTA
                log.exception("move: %s -> %s on %s failed", folder, owner[0], owner[1])
                unfinished = True
        return unfinished

    async def _move(self, folder: str, alias: str, home: str) -> None:
        loop = asyncio.get_running_loop()
        mailbox = self.store.mailbox(folder)
        while not mailbox.close():
            await asyncio.sleep(0.01)  # a delivery under way lands first, then moves too
        if home == self.server and await loop.run_in_executor(
            None, self.store.rename, folder, alias
        ):
            log.info("move: %s renamed %s", folder, alias)
            return
        sink = self._local(alias) if home == self.server else self._remote(alias, home)
        moved = 0
        for batch in _batches(mailbox.messages()):
            await sink({"alias": alias, "messages": await loop.run_in_executor(None, _read, batch)})
            await loop.run_in_executor(None, _forget, batch)
            moved += len(batch)
        delivered = await loop.run_in_executor(None, mailbox.delivered_ids)
        await sink({"alias": alias, "messages": [], "delivered": delivered})
        if not await loop.run_in_executor(None, self.store.discard, folder):
            raise OSError(f"mail came back to {folder} during its move")  # the next sweep
        log.info("move: %s: %d messages to %s on %s", folder, moved, alias, home)

    def _local(self, alias: str) -> Sink:
        async def sink(document: dict[str, Any]) -> object:
            return await take(self.store, alias, document)

        return sink

    def _remote(self, alias: str, home: str) -> Sink:
        async def sink(document: dict[str, Any]) -> object:
            endpoint = self.endpoints(home)
            if endpoint is None:
                raise TransferError(f"{home} is not running")
            move = {**document, "from": self.server}
            return await send_frame(*endpoint, "MOVE", move, self.tls(home))

        return sink


async def take(store: MailStore, alias: str, document: dict[str, Any]) -> int:
    """The receiving side of a MOVE frame, for mailbox `alias` (homed here): its messages
    (durably, each id once) and the ids delivered at the old home. Raises ValueError for a
    malformed frame."""
    moved = [_moved(item) for item in document.get("messages", ())]
    mailbox = store.mailbox(alias)
    mailbox.reopen()  # if it was moving away when it was homed here again
    taken = await mailbox.adopt_soon(moved)
    if delivered := document.get("delivered"):
        if not all(isinstance(uid, str) and uid.isalnum() for uid in delivered):
            raise ValueError("delivered ids must be hex strings")
        await asyncio.get_running_loop().run_in_executor(None, mailbox.remember, delivered)
    return taken


def _moved(item: Any) -> MovedMessage:
    folder, name, data = item
    if folder not in ("new", "cur") or not isinstance(name, str) or not isinstance(data, bytes):
        raise ValueError("a moved message is [new|cur, file name, bytes]")
    return folder, name, data


def _batches(messages: list[StoredMessage]) -> Iterator[list[StoredMessage]]:
    batch: list[StoredMessage] = []
    size = 0
    for message in messages:
        if batch and (len(batch) >= BATCH_MESSAGES or size + message.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += message.size
    if batch:
        yield batch


def _read(batch: list[StoredMessage]) -> list[list[Any]]:
    return [[m.path.parent.name, m.path.name, read_file(str(m.path))] for m in batch]


def _forget(batch: list[StoredMessage]) -> None:
    """The batch is durable at its new home: gone from here. Not flushed: an unlink a power
    loss undoes only sends the batch again, which the new home takes once."""
    for message in batch:
        message.path.unlink(missing_ok=True)
