"""The IMS's outbound side (the seed's step 4): it takes what the MTA put in its outbox,
converts it to RFC 5322, finds the domain's MX (RFC 5321 §5.1), and delivers over SMTP,
retrying on the connector's schedule."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import email.errors
import email.header
import email.parser
import email.policy
import email.utils
import logging
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from mailwright.runtime.contract import ImsSettings
from mailwright.runtime.discovery import OutsideRuntimeError, Peers
from mailwright.runtime.formats.message import (
    Address,
)
from mailwright.runtime.formats.render import to_rfc5322
from mailwright.runtime.ims.smtpclient import smtp_send
from mailwright.runtime.mta.agent import Mta
from mailwright.runtime.mta.ndr import Failure, is_report
from mailwright.runtime.mta.queue import PendingRecipient, QueueEntry, sleep_until_due
from mailwright.runtime.routing import AddressType, fit

log = logging.getLogger("mailwright.ims")

_ENHANCED_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")  # RFC 3463 §2


@dataclass(frozen=True)
class MailExchanger:
    preference: int
    host: str
    addresses: tuple[str, ...]


class NoMailError(Exception):
    """The domain says it takes no mail: null MX (RFC 7505)."""


# Postfix's defaults for its smtp clients: default_process_limit transactions at once in all,
# default_destination_concurrency_limit of them to one domain.
TRANSACTIONS = 100
PER_DOMAIN = 20


class Outbound:
    def __init__(
        self,
        mta: Mta,
        settings: ImsSettings,
        peers: Callable[[], Peers],
        source: str | None = None,
    ) -> None:
        self.source = source  # the address its connections come from (None: the system's)
        self.mta = mta
        self.settings = settings
        self.peers = peers  # of the host's current bundle: where DNS and MX addresses are
        self.outbox = mta.outbox
        # The outbox as this IMS knows it, by entry id: read once when `run` starts, then told
        # by the MTA (`adopt`) and kept by `_settle`; never rescanned, however much waits.
        self._queued: dict[str, QueueEntry] = {}
        self._busy: set[str] = set()  # in a transaction now
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(TRANSACTIONS)
        # smtplib's blocking sessions get threads of their own, as many as may run: in the
        # loop's default pool (a few threads a CPU) a few silent MXs would hold up all mail.
        self._clients = ThreadPoolExecutor(TRANSACTIONS, thread_name_prefix="smtp-client")
        self._domains: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(PER_DOMAIN)
        )
        mta.outbox_listener = self.adopt

    def adopt(self, entry: QueueEntry) -> None:
        self._queued[entry.id] = entry
        self._wakeup.set()

    async def run(self) -> None:
        try:
            await self._serve()
        finally:  # stopped: no new session; one under way ends on its own
            self._clients.shutdown(wait=False)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        for entry in await loop.run_in_executor(None, self.outbox.entries):
            self._queued.setdefault(entry.id, entry)
        while True:
            self._wakeup.clear()
            now = time.time()
            for entry in list(self._queued.values()):
                if entry.id not in self._busy and any(p.next_try <= now for p in entry.pending):
                    self._busy.add(entry.id)
                    task = loop.create_task(self._deliver_in_turn(entry))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            waiting = [e for e in self._queued.values() if e.id not in self._busy]
            await sleep_until_due(waiting, self._wakeup)

    async def _deliver_in_turn(self, entry: QueueEntry) -> None:
        """`deliver`, once a transaction may start (TRANSACTIONS in all, PER_DOMAIN to one
        domain); a failure is logged and the entry tried again on the next round."""
        domain = entry.pending[0].address.address.rpartition("@")[2].casefold()
        try:
            async with self._slots, self._domains[domain]:
                await self.deliver(entry)
        except Exception:  # one bad entry must not stop the others
            log.exception("delivery failed", extra={"message_id": entry.message.message_id})
            await asyncio.sleep(1.0)
        finally:
            self._busy.discard(entry.id)
            self._wakeup.set()

    async def deliver(self, entry: QueueEntry) -> None:
        """The entry's due recipients (all of one domain: the MTA grouped them) in one SMTP
        transaction per mail exchanger; whoever an MX refused for now is offered to the next
        (RFC 5321 §5.1), and each recipient ends as its own replies say."""
        due = [p.address for p in entry.pending if p.next_try <= time.time()]
        if not due:
            return
        domain = due[0].address.rpartition("@")[2]
        try:
            exchangers = await self.mail_exchangers(domain)
        except NoMailError:
            reason = f"{domain} accepts no mail (null MX)"
            await self._settle(entry, Outcome(failures=[Failure(a, "5.1.10", reason) for a in due]))
            return
        except dns.exception.DNSException as exc:
            reason = f"DNS lookup for {domain} failed: {exc}"
            await self._settle(entry, Outcome(deferred=dict.fromkeys(due, reason)))
            return
        # What DNS answered, for `mailwright track`: the MX hosts by preference, their addresses.
        self.mta.tracking.event(
            "mx",
            entry.message.message_id,
            domain=domain,
            exchangers=[f"{e.preference} {e.host} {' '.join(e.addresses)}" for e in exchangers],
        )
        outcome = Outcome(deferred=dict.fromkeys(due, "no mail exchanger"))
        for exchanger in exchangers:
            for address in exchanger.addresses:
                if outcome.deferred:
                    replies = await self._send(entry, list(outcome.deferred), address)
                    outcome.record(replies, exchanger.host)
        await self._settle(entry, outcome)

    async def mail_exchangers(self, domain: str) -> list[MailExchanger]:
        """RFC 5321 §5.1: MX by preference (equal ones in random order), else the A record."""
        resolver = _resolver(self.peers().resolvers())
        try:
            answer = await resolver.resolve(domain, "MX")
        except dns.resolver.NoAnswer:
            return [MailExchanger(0, domain, tuple(await self._addresses(resolver, domain)))]
        # Equal preferences in random order, so their load is spread.
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if any(r.exchange.to_text() == "." for r in records):
            raise NoMailError(domain)
        return [
            MailExchanger(
                r.preference,
                r.exchange.to_text(),
                tuple(await self._addresses(resolver, r.exchange.to_text())),
            )
            for r in records
        ]

    async def _addresses(self, resolver: dns.asyncresolver.Resolver, host: str) -> list[str]:
        try:
            return [r.to_text() for r in await resolver.resolve(host, "A")]
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []

    async def _send(
        self, entry: QueueEntry, recipients: list[Address], address: str
    ) -> dict[Address, str]:
        """One SMTP transaction to `address`: each recipient's final reply."""
        try:
            endpoint = self.peers().smtp(address)
        except OutsideRuntimeError as exc:
            # Only addresses of the local runtime are reachable; nothing leaves loopback.
            return dict.fromkeys(recipients, f"4.4.1 {exc}")
        data = self._render(entry)
        # RFC 5321 §4.5.5: a notification goes out from the null reverse-path, <>.
        sender = "" if is_report(entry.message) else entry.message.sender.address
        origin = (self.source, self.mta.fqdn)
        forward = [r.address for r in recipients]
        replies = await asyncio.get_running_loop().run_in_executor(
            self._clients, smtp_send, endpoint, origin, sender, forward, data
        )
        return {r: replies[r.address] for r in recipients}

    def _render(self, entry: QueueEntry) -> bytes:
        domain = entry.pending[0].address.address.rpartition("@")[2]
        uuencoded, charset = False, "utf-8"
        for rule in self.settings.message_formats:
            if _matches(rule.domain, domain):
                uuencoded, charset = rule.format == "uuencode", rule.charset or charset
                break
        when = email.utils.format_datetime(datetime.datetime.now(datetime.UTC))
        received = f"Received: by {self.mta.fqdn} (mailwright IMS);\r\n\t{when}\r\n".encode()
        self.mta.tracking.event(
            "converted",
            entry.message.message_id,
            direction="outbound",
            format="uuencode" if uuencoded else "mime",
        )
        return received + to_rfc5322(entry.message, uuencoded=uuencoded, charset=charset)

    async def _settle(self, entry: QueueEntry, outcome: Outcome) -> None:
        """Log what happened, report the failures in one NDR, and rewrite the entry with only
        the recipients still to be tried (or remove it): the report is queued before the
        entry changes, so a crash in between repeats the report (the same report id, which
        the queue and the store de-duplicate) and loses none."""
        message_id = entry.message.message_id
        for recipient, via in outcome.delivered.items():
            self.mta.tracking.event("delivered", message_id, recipient=recipient.address, via=via)
        age = time.time() - entry.first_seen
        if age >= self.settings.retry.give_up:
            outcome.give_up(f"gave up after {int(age)}s")
        await self.mta.report(entry.message, outcome.failures)
        finished = {*outcome.delivered, *(f.recipient for f in outcome.failures)}
        remaining = tuple(
            self._deferred(entry, pending, outcome.deferred[pending.address])
            if pending.address in outcome.deferred
            else pending
            for pending in entry.pending
            if pending.address not in finished
        )
        if not remaining:
            self.outbox.remove(entry)
            self._queued.pop(entry.id, None)
        else:  # one atomic replace (a temporary file made durable, then renamed)
            rewritten = replace(entry, pending=remaining)
            await self.outbox.write_soon(rewritten)
            self._queued[entry.id] = rewritten

    def _deferred(
        self, entry: QueueEntry, pending: PendingRecipient, error: str
    ) -> PendingRecipient:
        """The recipient's next try on the connector's retry schedule."""
        intervals = self.settings.retry.intervals
        delay = intervals[min(pending.attempts, len(intervals) - 1)]
        self.mta.tracking.event(
            "deferred", entry.message.message_id, recipient=pending.address.address, reason=error
        )
        return replace(
            pending, attempts=pending.attempts + 1, next_try=time.time() + delay, last_error=error
        )


@dataclass
class Outcome:
    """What became of the recipients of one delivery attempt."""

    delivered: dict[Address, str] = dataclasses.field(
        default_factory=dict
    )  # by which mail exchanger
    failures: list[Failure] = dataclasses.field(default_factory=list)
    deferred: dict[Address, str] = dataclasses.field(default_factory=dict)  # why not yet

    def record(self, replies: dict[Address, str], via: str) -> None:
        """One transaction's replies: 2yz delivered, 5yz failed for good (RFC 5321 §4.2.1),
        anything else (4yz, no connection) still to be tried."""
        for recipient, reply in replies.items():
            if reply.startswith("2"):
                self.delivered[recipient] = via
            elif reply.startswith("5"):
                self.failures.append(Failure(recipient, _permanent_status(reply), reply))
            else:
                self.deferred[recipient] = reply
                continue
            self.deferred.pop(recipient, None)

    def give_up(self, why: str) -> None:
        """Past the connector's give-up time every recipient still waiting fails (4.4.7)."""
        self.failures += [Failure(r, "4.4.7", f"{why}: {e}") for r, e in self.deferred.items()]
        self.deferred = {}


def _permanent_status(reply: str) -> str:
    """The RFC 3463 status of a 5xx reply; 5.0.0 when the server gave none (RFC 3463 §3.1)."""
    words = reply.split(" ", 2)
    return words[1] if len(words) > 1 and _ENHANCED_STATUS.match(words[1]) else "5.0.0"


def _matches(pattern: str, domain: str) -> bool:
    """A per-domain format rule's pattern, with the address-space wildcards * and %."""
    return fit(AddressType.SMTP, pattern, f"postmaster@{domain}") is not None


def _resolver(servers: list[tuple[str, int]] | None) -> dns.asyncresolver.Resolver:
    """A resolver asking `servers`, or the system's (/etc/resolv.conf) when there are none."""
    if servers is None:
        return dns.asyncresolver.Resolver()
    resolver = dns.asyncresolver.Resolver(configure=False)
    # dnspython asks each nameserver at its own port (dns.nameserver.Do53Nameserver).
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in servers]
    return resolver
