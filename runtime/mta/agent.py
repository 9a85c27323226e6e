"""The MTA of one host: accepts hand-offs into its durable queue, routes every recipient, and
delivers into the store, transfers to other servers, hands mail for the internet to the IMS,
or returns a non-delivery report.

Hand-offs are at-least-once and every receiver de-duplicates (the queue by message and
recipients, the store by message id), so a crash at any moment loses nothing and duplicates
nothing: an entry leaves the queue only after every recipient was delivered or handed on.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from mailwright.runtime.auth.accounts import Account, Accounts, accounts_from_host
from mailwright.runtime.contract import HostConfig
from mailwright.runtime.formats.message import Address, InternalMessage, decode, encode
from mailwright.runtime.formats.render import to_rfc5322
from mailwright.runtime.mta.mailboxmove import MailboxMover, take
from mailwright.runtime.mta.ndr import Failure, non_delivery_report
from mailwright.runtime.mta.queue import MessageQueue, QueueEntry, sleep_until_due
from mailwright.runtime.mta.router import Decision, Disposition, Router
from mailwright.runtime.mta.tracking import TrackingLog
from mailwright.runtime.mta.transfer import (
    Endpoint,
    TransferError,
    recipients_from,
    recipients_payload,
    send_frame,
)
from mailwright.runtime.store.mailstore import DeliveryError, MailboxMovedError, MailStore
from mailwright.runtime.tls import ClientTls

log = logging.getLogger("mailwright.mta")

# RFC 5321 §6.3 counts Received headers against loops; inside the organization we count hops.
MAX_HOPS = 30
RETRY_CAP = 300.0  # seconds between attempts to reach a server of the organization
PARALLEL = 32  # queue entries processed at once

Format = tuple[bool, str]  # how mail from inside the organization is rendered: uuencoded, charset


def mailbox_formats(config: HostConfig) -> dict[str, Format]:
    """Each mailbox's POP3 message format and character set, by alias."""
    return {
        row.alias: (row.pop3.message_format == "uuencode", row.pop3.charset)
        for row, _ in config.mailboxes
    }


def size_limits(config: HostConfig) -> dict[str, int | None]:
    return {row.alias: row.size_limit for row, _ in config.mailboxes}


@dataclass(frozen=True)
class MailboxTables:
    """What a host keeps per mailbox of its config, made off the event loop for a reload
    (for 100,000 mailboxes that takes half a second)."""

    accounts: dict[str, Account]
    formats: dict[str, Format]
    size_limits: dict[str, int | None]

    @classmethod
    def of(cls, config: HostConfig) -> MailboxTables:
        return cls(accounts_from_host(config), mailbox_formats(config), size_limits(config))


class PeerTrust(Protocol):
    """The organization's mutual TLS on the transfer port, as the host runs it now."""

    def client(self, server: str) -> ClientTls | None:
        """How to reach a peer server: this host's certificate, and the peer's fqdn its
        certificate must hold; None if it is no server of the organization."""

    def server_named(self, fqdn: str) -> str | None:
        """The server of the organization whose fqdn a verified certificate names."""


class Mta:
    def __init__(  # noqa: PLR0917 - the host process wires these once
        self,
        config: HostConfig,
        router: Router,
        home: Path,  # the host's data folder
        store: MailStore | None,
        accounts: Accounts,
        endpoints: Endpoint,
        trust: PeerTrust | None = None,  # None: transfers in clear text (tests of the MTA alone)
    ) -> None:
        self.server = config.server.name
        self.fqdn = config.server.fqdn
        self.postmaster = config.postmaster
        self._router = router
        self.queue = MessageQueue(home / "queue")
        self.outbox = MessageQueue(home / "outbox")  # for the IMS: mail for the internet
        self.tracking = TrackingLog(home / "tracking.jsonl", self.server)
        self.store = store
        self.accounts = accounts
        self.endpoints = endpoints
        self.trust = trust
        self.formats = mailbox_formats(config)
        self._wakeup = asyncio.Event()
        # The queue as the MTA knows it, by entry id: read from disk once when `run` starts,
        # then kept by `accept` and `_settle`, so the MTA never rescans its folder.
        self._queued: dict[str, QueueEntry] = {}
        # The IMS's outbound side (ims.Outbound), told of each entry put in the outbox.
        self.outbox_listener: Callable[[QueueEntry], None] | None = None
        # Brings mail the store holds for mailboxes homed or named otherwise now to them.
        self.mover = (
            None
            if store is None
            # A lambda: a reload swaps the router.
            else MailboxMover(
                store,
                self.server,
                lambda alias: self.router.owner(alias),  # noqa: PLW0108
                endpoints,
                self._client_tls,
            )
        )

    def _client_tls(self, server: str) -> ClientTls | None:
        return None if self.trust is None else self.trust.client(server)

    @property
    def router(self) -> Router:
        return self._router

    @router.setter
    def router(self, router: Router) -> None:
        """A reload's new GAL may home or name mailboxes otherwise: the mover looks again."""
        self._router = router
        if self.mover is not None:
            self.mover.wake()

    def reload(
        self, config: HostConfig, router: Router, tables: MailboxTables | None = None
    ) -> None:
        """The host's reloaded config and the router over its serial's GAL and GWART, for
        whatever the MTA does next: the one place where a new host config reaches the MTA.
        Tables are swapped, not rebuilt in place, so what is under way (a delivery, a POP3
        session with its locked maildrop) ends as it began. `tables`: MailboxTables.of(config),
        made beforehand off the event loop."""
        tables = tables or MailboxTables.of(config)
        self.router = router
        self.fqdn = config.server.fqdn
        self.postmaster = config.postmaster
        self.formats = tables.formats
        self.accounts.replace(tables.accounts)
        if self.store is not None:
            self.store.follow(tables.size_limits)

    def recover(self) -> list[str]:
        """At the host's start, before anything is queued: MessageQueue.recover of the queue
        and the outbox; the entry ids published again."""
        return self.queue.recover() + self.outbox.recover()

    # --- accepting -----------------------------------------------------------------------------

    async def accept(self, message: InternalMessage, recipients: list[Address], source: str) -> str:
        """Queue durably (fsync) and only then return; raises ValueError for a looping message."""
        now = datetime.datetime.now(datetime.UTC)
        entry = QueueEntry.new(message.with_hop(self.server, now), recipients, source)
        message = entry.message
        fresh = await self.queue.put_soon(entry)
        if fresh:
            self.tracking.event(
                "received", message.message_id, source=source, recipients=_list(recipients)
            )
            self.adopt(entry)
        return entry.id

    def adopt(self, entry: QueueEntry) -> None:
        """A durably queued entry (this MTA's, or an IMS worker's) joins the MTA's work."""
        self._queued.setdefault(entry.id, entry)
        self._wakeup.set()

    async def rescan(self) -> None:
        """Adopt whatever is queued on disk and not known yet: at start, and after an IMS
        worker died (an entry it queued may never have been announced)."""
        for entry in await asyncio.get_running_loop().run_in_executor(None, self.queue.entries):
            self.adopt(entry)

    async def handle_frame(
        self, verb: str, document: dict[str, Any], peer: str, certificate: str
    ) -> str:
        """The transfer protocol's policy: XFER from another MTA, SUBMIT from a client, MOVE
        from a mailbox's previous home. `certificate`: the common name of the peer's verified
        certificate, "" without one (transfer.py has refused what needed one)."""
        if verb in ("XFER", "MOVE") and (refusal := self._impostor(document, certificate)):
            return refusal
        if verb == "MOVE":
            return await self._take_moved(document)
        try:
            message = decode(document["message"])
            recipients = recipients_from(document["rcpt"])
        except (KeyError, ValueError, TypeError):
            return "554 5.6.0 malformed message"
        if verb == "SUBMIT":
            refusal = await self._authorize(document, message)
            if refusal:
                return refusal
        try:
            # The store and the reports render it as RFC 5322 later: a message that cannot be
            # rendered (a line break in a header, a sender without a domain) is refused here,
            # before it is queued, instead of failing the MTA's worker then.
            await asyncio.get_running_loop().run_in_executor(None, to_rfc5322, message)
        except (KeyError, ValueError, TypeError) as exc:
            return f"554 5.6.0 message cannot be rendered: {' '.join(str(exc).split())}"
        source = document.get("from", peer) if verb == "XFER" else f"client {peer}"
        await self.accept(message, recipients, str(source))
        if verb == "SUBMIT":
            self.tracking.event("submitted", message.message_id, sender=message.sender.address)
            return f"250 2.0.0 {message.message_id}"
        return f"250 2.0.0 queued {message.message_id}"

    def _impostor(self, document: dict[str, Any], certificate: str) -> str | None:
        """A hand-off must come from the server it says it comes from: the one the verified
        certificate names (RFC 5280 §4.1.2.6, its subject; the CN is the server's fqdn), or
        one server of the organization could pass its mail off as another's."""
        if self.trust is None:
            return None
        sender = self.trust.server_named(certificate) if certificate else None
        claimed = document.get("from")
        if sender is None or claimed != sender:
            return f"550 5.7.1 {claimed} is not the server certified as {certificate or 'none'}"
        return None

    async def _take_moved(self, document: dict[str, Any]) -> str:
        owner = self.router.owner(str(document.get("alias", "")))
        if owner is None or owner[1] != self.server or self.store is None:
            # This host may not have reloaded the GAL that homes the mailbox here yet.
            return f"450 4.2.0 no mailbox {document.get('alias')} is homed on {self.server}"
        try:
            taken = await take(self.store, owner[0], document)
        except (ValueError, TypeError) as exc:
            return f"554 5.6.0 malformed MOVE: {exc}"
        return f"250 2.0.0 {taken} taken"

    async def _authorize(self, document: dict[str, Any], message: InternalMessage) -> str | None:
        account = await self.accounts.authenticate(
            "submission", str(document.get("user", "")), str(document.get("password", ""))
        )
        if account is None:
            return "535 5.7.8 authentication failed"
        if message.sender.address.casefold() not in {
            account.alias.casefold(),
            account.address.casefold(),
        }:
            return "550 5.7.1 the sender address is not the authenticated mailbox's"
        if self.router.route("SMTP", account.address).disposition is not Disposition.LOCAL:
            return "550 5.7.1 submit to the mailbox's home server"
        return None

    # --- processing ----------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:  # its tasks end with this one
            if self.mover is not None:
                tasks.create_task(self.mover.run())
            await self._deliver_forever()

    async def _deliver_forever(self) -> None:
        await self.rescan()  # what was queued before this start (a crash, a restart)
        while True:
            self._wakeup.clear()
            now = time.time()
            due = [e for e in self._queued.values() if any(p.next_try <= now for p in e.pending)]
            # Several at a time, so their writes share the group commit's fsyncs.
            for start in range(0, len(due), PARALLEL):
                batch = due[start : start + PARALLEL]
                await asyncio.gather(*(self._process_safely(entry) for entry in batch))
            await self._sleep_until_due()

    async def _process_safely(self, entry: QueueEntry) -> None:
        try:
            await self.process(entry)
        except Exception:  # one bad entry must not stop the MTA
            # The entry stays queued (nothing was acknowledged on its behalf) and is tried
            # again later; the cause goes to the host's log.
            log.exception("processing failed", extra={"message_id": entry.message.message_id})
            await asyncio.sleep(1.0)

    async def _sleep_until_due(self) -> None:
        await sleep_until_due(self._queued.values(), self._wakeup)

    async def process(self, entry: QueueEntry) -> None:
        message = entry.message
        done: set[Address] = set()
        failures: list[Failure] = []
        deferred: dict[Address, str] = {}
        transfers: dict[str, list[Address]] = {}
        internet: dict[str, list[Address]] = {}
        if len(message.hops) > MAX_HOPS:
            failures += [
                Failure(p.address, "5.4.6", "loop detected: too many hops") for p in entry.pending
            ]
        for pending in entry.pending if not failures else ():
            if pending.next_try > time.time():
                continue
            decision = self.router.route(
                pending.address.type, pending.address.address, message.message_id
            )
            self.tracking.event(
                "routed", message.message_id, recipient=pending.address.address, via=decision.reason
            )
            hops = (transfers, internet)
            outcome = await self._dispose(message, pending.address, decision, hops)
            if isinstance(outcome, Failure):
                failures.append(outcome)
            elif isinstance(outcome, str):
                deferred[pending.address] = outcome
            elif outcome:
                done.add(pending.address)
        for recipients in internet.values():
            await self._to_ims(message, recipients)
            done.update(recipients)
        for server, recipients in transfers.items():
            error = await self._transfer(message, server, recipients)
            for recipient in recipients:
                if error is None:
                    done.add(recipient)
                elif error.temporary:
                    deferred[recipient] = str(error)
                else:  # RFC 5321 §4.2.1: a 5yz reply is permanent, retrying cannot help
                    failures.append(
                        Failure(recipient, _status_of(str(error)), f"{server}: {error}")
                    )
        done.update(f.recipient for f in failures)
        await self.report(message, failures)
        await self._settle(entry, done, deferred)

    async def _dispose(
        self,
        message: InternalMessage,
        recipient: Address,
        decision: Decision,
        hops: tuple[dict[str, list[Address]], dict[str, list[Address]]],
    ) -> Failure | bool | str:
        """Deliver, or fail; recipients for another server or for the internet wait in `hops`
        (by server, by domain), to travel together (False: not done yet; a text: try again
        later, for that reason)."""
        if decision.disposition is Disposition.NDR:
            return Failure(recipient, decision.status, decision.reason)
        transfers, internet = hops
        if decision.disposition is Disposition.TRANSFER:
            transfers.setdefault(decision.server, []).append(recipient)
            return False
        if decision.disposition is Disposition.GATEWAY:
            # The IMS's next hop is the domain's MX: one outbox entry per domain, so its
            # recipients share one SMTP transaction (RFC 5321 §3.3: several RCPTs, one DATA).
            domain = recipient.address.rpartition("@")[2].casefold()
            internet.setdefault(domain, []).append(recipient)
            return False
        return await self._deliver(message, recipient, decision.alias)

    async def _to_ims(self, message: InternalMessage, recipients: list[Address]) -> None:
        entry = QueueEntry.new(message, recipients, self.server)
        if await self.outbox.put_soon(entry) and self.outbox_listener is not None:
            self.outbox_listener(entry)
        for recipient in recipients:
            self.tracking.event(
                "gateway", message.message_id, recipient=recipient.address, to="IMS"
            )

    async def _deliver(
        self, message: InternalMessage, recipient: Address, alias: str
    ) -> Failure | bool | str:
        if self.store is None:
            return Failure(recipient, "5.3.0", f"{self.server} has no store")
        uuencoded, charset = self.formats.get(alias, (False, "utf-8"))
        mailbox = self.store.mailbox(alias)
        try:
            await mailbox.deliver_message(message, uuencoded=uuencoded, charset=charset)
        except DeliveryError as exc:
            return Failure(recipient, "5.2.2", str(exc))
        except MailboxMovedError as exc:
            return str(exc)  # routed again when next tried: to the mailbox's new home
        self.tracking.event(
            "delivered", message.message_id, recipient=recipient.address, mailbox=alias
        )
        return True

    async def _transfer(
        self, message: InternalMessage, server: str, recipients: list[Address]
    ) -> TransferError | None:
        """None when handed over; else why not, and whether to try again (`temporary`)."""
        endpoint = self.endpoints(server)
        if endpoint is None:
            return TransferError(f"{server} is not running")
        document = {
            "message": encode(message),
            "rcpt": recipients_payload(recipients),
            "from": self.server,
        }
        try:
            await send_frame(*endpoint, "XFER", document, self._client_tls(server))
        except TransferError as exc:
            return exc
        self.tracking.event(
            "transferred", message.message_id, to=server, recipients=_list(recipients)
        )
        return None

    async def report(self, message: InternalMessage, failures: list[Failure]) -> None:
        """One non-delivery report (RFC 3464) to the sender for every recipient that failed."""
        if not failures:
            return
        for failure in failures:
            self.tracking.event(
                "ndr",
                message.message_id,
                recipient=failure.recipient.address,
                status=failure.status,
                reason=failure.diagnostic,
            )
        now = datetime.datetime.now(datetime.UTC)
        report = non_delivery_report(message, failures, self.fqdn, self.postmaster, now)
        if report is not None:
            await self.accept(report, [r.address for r in report.recipients], "ndr")

    async def _settle(
        self, entry: QueueEntry, done: set[Address], deferred: dict[Address, str]
    ) -> None:
        remaining = []
        for waiting in entry.pending:
            if waiting.address in done:
                continue
            pending = waiting
            if pending.address in deferred:
                attempts = pending.attempts + 1
                pending = replace(
                    pending,
                    attempts=attempts,
                    next_try=time.time() + min(RETRY_CAP, 2.0**attempts),
                    last_error=deferred[pending.address],
                )
                self.tracking.event(
                    "deferred",
                    entry.message.message_id,
                    recipient=pending.address.address,
                    reason=pending.last_error,
                )
            remaining.append(pending)
        if not remaining:
            self.queue.remove(entry)
            self._queued.pop(entry.id, None)
        elif tuple(remaining) != entry.pending:
            rewritten = replace(entry, pending=tuple(remaining))
            await self.queue.write_soon(rewritten)
            self._queued[entry.id] = rewritten


def _status_of(reply: str) -> str:
    """The RFC 3463 status of a reply like `554 5.3.4 ...`; 5.0.0 when it has none."""
    words = reply.split()
    if len(words) > 1 and re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", words[1]):
        return words[1]
    return "5.0.0"


def _list(recipients: list[Address]) -> str:
    return ", ".join(r.address for r in recipients)
