"""One host's runtime process: serves the roles of one server from its bundle (runtime/bundle.py).

    python -m mailwright.runtime.host BUNDLE --data DIR [--bind ADDRESS]
                                     [--pop3-port N] [--transfer-port N] [--dns-port N]
                                     [--smtp-port N]

Every host runs an MTA (the internal transfer port); a store host adds the mailbox store and
its POP3 server, an IMS host the SMTP server, a DNS host the name server. Its queue, store and
logs are in DATA, which no other host reads. Once it listens the process writes
`DATA/endpoints.json` and `DATA/loaded.json` (the serial it runs), for whoever runs it, and
prints one line `ready pop3=HOST:PORT ...`; it stops cleanly on SIGTERM/SIGINT. On SIGHUP it
reads BUNDLE again (its config, the GAL, GWART, zones and peers' addresses) without closing
any session, and reports the serial it then runs.

Only the organization talks on the transfer port: STARTTLS (RFC 3207) then mutual TLS under
the organization's CAs, with the bundle's `tls/host.pem` (runtime/mta/transfer.py). A bundle
without it is refused at start (exit 1, one line), and a reload to one is refused too: no host
serves that port in clear text. A reload that brings new certificates or CAs (an apply's
rotation) serves the connections that start from then on with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from mailwright.runtime import logs
from mailwright.runtime.auth.accounts import Accounts
from mailwright.runtime.bundle import Bundle, BundleError
from mailwright.runtime.contract import (
    WELL_KNOWN_PORTS,
    ContractError,
    HostConfig,
    ImsSettings,
    Service,
)
from mailwright.runtime.host.snapshot import Snapshot, SnapshotError, steady_heap
from mailwright.runtime.ims.inbound import InboundHandler
from mailwright.runtime.ims.outbound import Outbound
from mailwright.runtime.ims.smtpserver import smtp_server
from mailwright.runtime.ims.workers import ImsWorkers, worker_count
from mailwright.runtime.mta import transfer
from mailwright.runtime.mta.agent import Mta, PeerTrust, size_limits
from mailwright.runtime.mta.transfer import Endpoint
from mailwright.runtime.nameserver import NameServer
from mailwright.runtime.store.mailstore import MailStore
from mailwright.runtime.store.pop3 import Pop3Server
from mailwright.runtime.tls import ClientTls, self_signed, server_context

log = logging.getLogger("mailwright.host")

Ports = Mapping[Service, int]  # where each service listens


def store_for(config: HostConfig, data: Path) -> MailStore:
    return MailStore(data / "store", size_limits(config))


def tls_context(snapshot: Snapshot, data: Path) -> ssl.SSLContext:
    """For SMTP and POP3: the certificate the spec names, else the host's certificate from its
    organization's CA, else a self-signed one made at first start."""
    bundle = Bundle.open(snapshot.path)
    for certificate_name, key_name in (("server.pem", "server.key"), ("host.pem", "host.key")):
        certificate, key = bundle.tls_file(certificate_name), bundle.tls_file(key_name)
        if certificate is not None and key is not None:
            return server_context(certificate, key)
    certificate, key = self_signed(data, snapshot.config.server.fqdn)
    return server_context(certificate, key)


def pop3_server(snapshot: Snapshot, data: Path, store: MailStore, accounts: Accounts) -> Pop3Server:
    idle_timeout = float(snapshot.config.pop3.idle_timeout)
    return Pop3Server(accounts, store, tls_context(snapshot, data), idle_timeout=idle_timeout)


def _write_report(folder: Path, name: str, document: dict[str, Any]) -> None:
    """A report of this host for its peers, the supervisor and `mailwright send` (where it
    listens, which serial it runs): atomic, a temporary file renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{name}.tmp"
    temp.write_text(json.dumps(document, sort_keys=True), encoding="utf-8")
    os.replace(temp, folder / name)


async def serve(bundle: Path, data: Path, bind: str, ports: Ports) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host = Host(data, bind, Snapshot.read(bundle))
    steady_heap()
    endpoints = await host.listen(ports)
    host.report_loaded()
    _write_report(data, "endpoints.json", endpoints)
    loop.add_signal_handler(signal.SIGHUP, host.wanted.set)
    reloads = loop.create_task(host.follow_reloads())
    print("ready " + " ".join(f"{k}={v}" for k, v in sorted(endpoints.items())), flush=True)
    await stop.wait()
    reloads.cancel()
    await host.stop()


class Host:
    """The running parts of one host, and how a reload reaches each of them."""

    def __init__(self, data: Path, bind: str, snapshot: Snapshot) -> None:
        self.data = data  # its own folder: queue, store, tracking log, reports
        self.bind = bind
        self.snapshot = snapshot  # what it runs
        self.mta = _mta(snapshot, data, self.transfer_endpoint, self)
        self.listeners: dict[str, asyncio.Server] = {}
        self.pop3: Pop3Server | None = None
        self.inbound: SmtpInbound | None = None
        self.outbound: Outbound | None = None
        self._sending: asyncio.Task[None] | None = None  # the outbound's run
        self.nameserver: NameServer | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.wanted = asyncio.Event()  # a reload, asked for by SIGHUP
        self.failed: dict[str, Any] | None = None  # the last reload, if it failed

    async def listen(self, ports: Ports) -> dict[str, str]:
        """Serve every role of the config; where each service listens."""
        config, data, mta = self.snapshot.config, self.data, self.mta
        # Asked at each STARTTLS: the contexts of the bundle loaded last.
        self.listeners["transfer"] = await transfer.serve(
            mta.handle_frame, self.bind, ports["transfer"], tls=self._transfer_server
        )
        if mta.store is not None:
            self.pop3 = pop3_server(self.snapshot, data, mta.store, mta.accounts)
            self.listeners["pop3"] = await self.pop3.start(self.bind, ports["pop3"])
        self.tasks.append(asyncio.get_running_loop().create_task(mta.run()))
        endpoints = {name: _address(listener) for name, listener in self.listeners.items()}
        if config.server.serves("smtp"):
            address = (self.bind, ports["smtp"])
            self.inbound = await SmtpInbound.start(mta, self.snapshot, data, address)
            endpoints["smtp"] = self.inbound.address
            self._follow_transfer_mode(config.connector)
        if self.snapshot.authority is not None:
            self.nameserver = NameServer(self.snapshot.authority)
            host, port = await self.nameserver.start(self.bind, ports["dns"])
            endpoints["dns"] = f"{host}:{port}"
        return endpoints

    def _follow_transfer_mode(self, settings: ImsSettings) -> None:
        """The IMS sends to the internet if its connector's transfer mode says so, with the
        connector's settings (retries, per-domain formats) as last loaded."""
        if not settings.outbound:
            if self._sending is not None:
                # What is in the outbox stays there; transactions under way end on their own.
                self._sending.cancel()
            self.outbound, self._sending, self.mta.outbox_listener = None, None, None
        elif self.outbound is None:
            self.outbound = Outbound(self.mta, settings, lambda: self.snapshot.peers, self.bind)
            self._sending = asyncio.get_running_loop().create_task(self.outbound.run())
        else:
            self.outbound.settings = settings

    async def follow_reloads(self) -> None:
        """One reload at a time; SIGHUPs that come during one make one more after it."""
        while True:
            await self.wanted.wait()
            self.wanted.clear()
            try:
                await self.reload()
            except Exception:  # a part that could not take the serial in must not end reloads
                log.exception("reload failed part way")

    async def reload(self) -> None:
        """The state's current serial, read off the event loop and then taken in by every part:
        mailboxes, passwords, size limits, POP3 and IMS settings, GAL, GWART and zones. Open
        sessions carry on. If the serial cannot be read the host keeps what it runs, and
        says so in its log and in loaded.json."""
        loop = asyncio.get_running_loop()
        try:
            snapshot = await loop.run_in_executor(None, Snapshot.current, self.snapshot.path)
        except SnapshotError as exc:
            log.error("reload: %s; still serving serial %s", exc, self.snapshot.serial)
            self.failed = {"serial": exc.serial, "error": exc.why}
            self.report_loaded()
            return
        self.mta.reload(snapshot.config, snapshot.router, snapshot.tables)
        if self.pop3 is not None:
            self.pop3.idle_timeout = float(snapshot.config.pop3.idle_timeout)
        if self.inbound is not None:
            self._follow_transfer_mode(snapshot.config.connector)
            await self.inbound.reload(snapshot)
        if self.nameserver is not None and snapshot.authority is not None:
            self.nameserver.authority = snapshot.authority
        self.snapshot, self.failed = snapshot, None
        steady_heap()
        self.report_loaded()

    def report_loaded(self) -> None:
        """Which serial this host runs (and its last reload's failure): the supervisor puts it
        in status.json, and `apply` waits for every host to run the serial it applied."""
        _write_report(
            self.data, "loaded.json", {"serial": self.snapshot.serial, "failed": self.failed}
        )

    async def stop(self) -> None:
        if self.inbound is not None:
            await self.inbound.stop()
        for task in [*self.tasks, *([self._sending] if self._sending else [])]:
            task.cancel()
        if self.nameserver is not None:
            await self.nameserver.stop()
        for listener in self.listeners.values():
            listener.close()
            await listener.wait_closed()

    def transfer_endpoint(self, server: str) -> tuple[str, int] | None:
        """Where a peer's MTA listens, by the bundle this host runs now."""
        endpoint = self.snapshot.peers.transfer(server)
        return None if endpoint is None else (endpoint.host, endpoint.port)

    def _transfer_server(self) -> ssl.SSLContext:
        return self.snapshot.transfer.server

    def client(self, server: str) -> ClientTls | None:
        """Mutual TLS to a peer's transfer port: the peer must hold a certificate of the
        organization for the fqdn servers.json gives it (RFC 6125 §6.4.4, its SAN)."""
        endpoint = self.snapshot.peers.transfer(server)
        if endpoint is None:
            return None
        return ClientTls(self.snapshot.transfer.client, server_hostname=endpoint.name)

    def server_named(self, fqdn: str) -> str | None:
        """The server of the organization with this fqdn (a verified certificate's CN)."""
        wanted = fqdn.casefold()
        for name, peer in self.snapshot.peers.servers.items():
            if peer.fqdn.casefold() == wanted:
                return name
        return None


def _mta(snapshot: Snapshot, data: Path, endpoints: Endpoint, trust: PeerTrust) -> Mta:
    """The host's MTA over its store, its queue recovered before anything is queued."""
    config = snapshot.config
    store = store_for(config, data) if config.server.serves("pop3") else None
    accounts = Accounts(snapshot.tables.accounts)
    mta = Mta(config, snapshot.router, data, store, accounts, endpoints, trust)
    if recovered := mta.recover():
        log.warning("queue: %d entries recovered after a crash", len(recovered))
    return mta


@dataclass
class SmtpInbound:
    """The IMS's SMTP port: served by worker processes (see imsworker), or in this one."""

    server: asyncio.Server | None = None
    handler: InboundHandler | None = None
    workers: ImsWorkers | None = None

    @classmethod
    async def start(
        cls, mta: Mta, snapshot: Snapshot, data: Path, address: tuple[str, int]
    ) -> SmtpInbound:
        context = tls_context(snapshot, data)  # made here first: workers only read it
        if count := worker_count():
            return cls(workers=ImsWorkers.start(mta, snapshot, data, address, count))
        handler = InboundHandler(mta, snapshot.config.connector, mta.accounts)
        server = await asyncio.get_running_loop().create_server(
            lambda: smtp_server(handler, handler.settings, context), *address
        )
        return cls(server=server, handler=handler)

    @property
    def address(self) -> str:
        return self.workers.address if self.workers else _address(self._server)

    @property
    def _server(self) -> asyncio.Server:
        assert self.server is not None
        return self.server

    async def reload(self, snapshot: Snapshot) -> None:
        """The connector's settings and the accounts, for the SMTP sessions that start from
        now on; with workers, once each of them runs the snapshot."""
        if self.workers is not None:
            await self.workers.reload(snapshot.path, snapshot.serial)
        elif self.handler is not None:
            self.handler.configure(snapshot.config.connector)

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        else:
            self._server.close()
            await self._server.wait_closed()


def _address(listener: asyncio.Server) -> str:
    host, port = listener.sockets[0].getsockname()[:2]
    return f"{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailwright-host", description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="the host's bundle (mailwright bundle)")
    parser.add_argument("--data", type=Path, required=True, help="its queue, store and logs")
    parser.add_argument("--bind", help="the address to listen on (default: the spec's ipv4)")
    for service, port in WELL_KNOWN_PORTS.items():
        parser.add_argument(f"--{service}-port", type=int, default=port)
    args = parser.parse_args(argv)
    ports = {service: getattr(args, f"{service}_port") for service in WELL_KNOWN_PORTS}
    return run(args.bundle, args.data, args.bind, ports)


def run(bundle: Path, data: Path, bind: str | None, ports: Ports) -> int:
    """Serve the bundle until SIGTERM; 1 with one line on stderr if it cannot."""
    try:
        data.mkdir(parents=True, exist_ok=True)
        server = Bundle.open(bundle).config().server
        logs.setup(f"host {server.name}")
        address = bind or server.ipv4
        uvloop.run(serve(bundle, data, address, ports))
    except (OSError, ValueError, ContractError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
