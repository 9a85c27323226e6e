"""One host's runtime process: reads its compiled `hosts/<server>.json`, serves its roles.

    python -m mailwright.runtime.host CONFIG --state DIR [--bind 127.0.0.1] [--serial N]
                                     [--pop3-port N] [--transfer-port N] [--dns-port N]
                                     [--smtp-port N]

Every host runs an MTA (the internal transfer port); a store host adds the mailbox store and
its POP3 server. Once it listens the process writes `<state>/hosts/<server>/endpoints.json` and
`loaded.json` (the serial it runs), and prints one line `ready pop3=HOST:PORT ...`; it stops
cleanly on SIGTERM/SIGINT. On SIGHUP it reloads the state's current serial (its own config,
the GAL, GWART and zones) without closing any session, and reports the serial it then runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from mailwright.runtime.auth.accounts import Accounts
from mailwright.runtime.contract import (
    WELL_KNOWN_PORTS,
    ContractError,
    HostConfig,
    ImsSettings,
    Service,
)
from mailwright.runtime.discovery import resolver_endpoint, smtp_endpoints
from mailwright.runtime.host.snapshot import Snapshot, SnapshotError, steady_heap
from mailwright.runtime.ims.inbound import InboundHandler
from mailwright.runtime.ims.outbound import Outbound
from mailwright.runtime.ims.smtpserver import smtp_server
from mailwright.runtime.ims.workers import ImsWorkers, worker_count
from mailwright.runtime.mta import transfer
from mailwright.runtime.mta.agent import Mta, size_limits
from mailwright.runtime.mta.transfer import endpoints_in
from mailwright.runtime.nameserver import NameServer
from mailwright.runtime.store.mailstore import MailStore
from mailwright.runtime.store.pop3 import Pop3Server
from mailwright.runtime.tls import self_signed, server_context

Ports = Mapping[Service, int]  # where each service listens


def store_for(config: HostConfig, state: Path) -> MailStore:
    return MailStore(state / "hosts" / config.server.name / "store", size_limits(config))


def tls_context(config: HostConfig, state: Path) -> ssl.SSLContext:
    """The certificate the spec names, or a self-signed one made at first start."""
    if config.tls is not None:
        certificate, key = Path(config.tls.certificate), Path(config.tls.private_key)
    else:
        server = config.server
        certificate, key = self_signed(state / "hosts" / server.name, server.fqdn)
    return server_context(certificate, key)


def pop3_server(
    config: HostConfig, state: Path, store: MailStore, accounts: Accounts
) -> Pop3Server:
    idle_timeout = float(config.pop3.idle_timeout)
    return Pop3Server(accounts, store, tls_context(config, state), idle_timeout=idle_timeout)


def _write_report(folder: Path, name: str, document: dict[str, Any]) -> None:
    """A report of this host for its peers, the supervisor and `mailwright send` (where it
    listens, which serial it runs): atomic, a temporary file renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{name}.tmp"
    temp.write_text(json.dumps(document, sort_keys=True), encoding="utf-8")
    os.replace(temp, folder / name)


async def serve(
    config_path: Path, state: Path, bind: str, ports: Ports, serial: int | None = None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    snapshot = Snapshot.read(config_path, serial)
    host = Host(state, bind, snapshot, _mta(snapshot, state))
    steady_heap()
    endpoints = await host.listen(ports)
    host.report_loaded()
    _write_report(host.folder, "endpoints.json", endpoints)
    loop.add_signal_handler(signal.SIGHUP, host.wanted.set)
    reloads = loop.create_task(host.follow_reloads())
    print("ready " + " ".join(f"{k}={v}" for k, v in sorted(endpoints.items())), flush=True)
    await stop.wait()
    reloads.cancel()
    await host.stop()


class Host:
    """The running parts of one host, and how a reload reaches each of them."""

    def __init__(self, state: Path, bind: str, snapshot: Snapshot, mta: Mta) -> None:
        self.state = state
        self.bind = bind
        self.snapshot = snapshot  # what it runs
        self.folder = state / "hosts" / snapshot.config.server.name
        self.mta = mta
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
        config, state, mta = self.snapshot.config, self.state, self.mta
        self.listeners["transfer"] = await transfer.serve(
            mta.handle_frame, self.bind, ports["transfer"]
        )
        if mta.store is not None:
            self.pop3 = pop3_server(config, state, mta.store, mta.accounts)
            self.listeners["pop3"] = await self.pop3.start(self.bind, ports["pop3"])
        self.tasks.append(asyncio.get_running_loop().create_task(mta.run()))
        endpoints = {name: _address(listener) for name, listener in self.listeners.items()}
        if config.server.serves("smtp"):
            address = (self.bind, ports["smtp"])
            self.inbound = await SmtpInbound.start(mta, self.snapshot, state, address)
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
            self.outbound = Outbound(
                self.mta,
                settings,
                resolver_endpoint(self.state),
                smtp_endpoints(self.state),
                source=self.bind,
            )
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
                traceback.print_exc()

    async def reload(self) -> None:
        """The state's current serial, read off the event loop and then taken in by every part:
        mailboxes, passwords, size limits, POP3 and IMS settings, GAL, GWART and zones. Open
        sessions carry on. If the serial cannot be read the host keeps what it runs, and
        says so in its log and in loaded.json."""
        loop = asyncio.get_running_loop()
        config_path = self.snapshot.config_path
        try:
            snapshot = await loop.run_in_executor(None, Snapshot.current, self.state, config_path)
        except SnapshotError as exc:
            print(f"reload: {exc}; still serving serial {self.snapshot.serial}", file=sys.stderr)
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
            self.folder, "loaded.json", {"serial": self.snapshot.serial, "failed": self.failed}
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


def _mta(snapshot: Snapshot, state: Path) -> Mta:
    """The host's MTA over its store, its queue recovered before anything is queued."""
    config = snapshot.config
    store = store_for(config, state) if config.server.serves("pop3") else None
    accounts = Accounts(snapshot.tables.accounts)
    mta = Mta(config, snapshot.router, state, store, accounts, endpoints_in(state))
    if recovered := mta.recover():
        print(f"queue: {len(recovered)} entries recovered after a crash", file=sys.stderr)
    return mta


@dataclass
class SmtpInbound:
    """The IMS's SMTP port: served by worker processes (see imsworker), or in this one."""

    server: asyncio.Server | None = None
    handler: InboundHandler | None = None
    workers: ImsWorkers | None = None

    @classmethod
    async def start(
        cls, mta: Mta, snapshot: Snapshot, state: Path, address: tuple[str, int]
    ) -> SmtpInbound:
        context = tls_context(snapshot.config, state)  # made here first: workers only read it
        if count := worker_count():
            return cls(workers=ImsWorkers.start(mta, snapshot, state, address, count))
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
            await self.workers.reload(snapshot.config_path, snapshot.serial)
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
    parser.add_argument("config", type=Path, help="the host's compiled hosts/<server>.json")
    parser.add_argument("--state", type=Path, required=True, help="the state directory")
    parser.add_argument("--bind", default="127.0.0.1", help="loopback address to listen on")
    for service, port in WELL_KNOWN_PORTS.items():
        parser.add_argument(f"--{service}-port", type=int, default=port)
    parser.add_argument("--serial", type=int, help="the state's serial CONFIG belongs to")
    args = parser.parse_args(argv)
    ports = {service: getattr(args, f"{service}_port") for service in WELL_KNOWN_PORTS}
    try:
        uvloop.run(serve(args.config, args.state, args.bind, ports, args.serial))
    except (OSError, ValueError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
