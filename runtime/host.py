"""One host's runtime process: reads its compiled `hosts/<server>.json`, serves its roles.

    python -m mailwright.runtime.host CONFIG --state DIR [--bind 127.0.0.1]
                                     [--pop3-port N] [--transfer-port N] [--dns-port N]
                                     [--smtp-port N]

Every host runs an MTA (the internal transfer port); a store host adds the mailbox store and
its POP3 server. Once it listens the process writes `<state>/hosts/<server>/endpoints.json` and
prints one line `ready pop3=HOST:PORT transfer=HOST:PORT`; it stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from mailwright.runtime import transfer
from mailwright.runtime.ims import (
    InboundHandler,
    Outbound,
    resolver_endpoint,
    smtp_endpoints,
    smtp_server,
)
from mailwright.runtime.imsworker import ImsWorkers, worker_count
from mailwright.runtime.mta import Mta
from mailwright.runtime.nameserver import Authority, NameServer, load_zones
from mailwright.runtime.pop3 import Pop3Accounts, Pop3Server, accounts_from_host
from mailwright.runtime.router import Router
from mailwright.runtime.store import MailStore
from mailwright.runtime.tls import self_signed, server_context
from mailwright.runtime.transfer import endpoints_in


def store_for(config: dict[str, Any], state: Path) -> MailStore:
    server = config["server"]["name"]
    limits = {m["alias"]: m["size_limit"] for m in config["mailboxes"]}
    return MailStore(state / "hosts" / server / "store", limits)


def tls_context(config: dict[str, Any], state: Path) -> ssl.SSLContext:
    """The certificate the spec names, or a self-signed one made at first start."""
    tls = config.get("tls")
    if tls:
        certificate, key = Path(tls["certificate"]), Path(tls["private_key"])
    else:
        server = config["server"]
        certificate, key = self_signed(state / "hosts" / server["name"], server["fqdn"])
    return server_context(certificate, key)


def pop3_server(
    config: dict[str, Any], state: Path, store: MailStore, accounts: Pop3Accounts
) -> Pop3Server:
    idle_timeout = float(config["pop3"]["idle_timeout"])
    return Pop3Server(accounts, store, tls_context(config, state), idle_timeout=idle_timeout)


def _write_endpoints(folder: Path, endpoints: dict[str, str]) -> None:
    """Where this host listens, for its peers and for `mailwright send` (atomic: tmp + rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / ".endpoints.json.tmp"
    temp.write_text(json.dumps(endpoints, sort_keys=True), encoding="utf-8")
    os.replace(temp, folder / "endpoints.json")


async def serve(config_path: Path, state: Path, bind: str, ports: dict[str, int]) -> None:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    services = config["server"]["services"]
    mta = _mta(config, config_path, state)
    steady_heap()
    store, accounts = mta.store, mta.accounts
    listeners = {"transfer": await transfer.serve(mta.handle_frame, bind, ports["transfer"])}
    if store is not None:
        pop3 = pop3_server(config, state, store, accounts)
        listeners["pop3"] = await pop3.start(bind, ports["pop3"])
    tasks = [loop.create_task(mta.run())]
    inbound = None
    if "smtp" in services:
        ims = config["ims"]
        address = (bind, ports["smtp"])
        inbound = await SmtpInbound.start(
            mta, accounts, config, config_path=config_path, state=state, address=address
        )
        if ims["transfer_mode"] in ("inbound_and_outbound", "outbound_only"):
            outbound = Outbound(
                mta, ims, resolver_endpoint(state), smtp_endpoints(state), source=bind
            )
            tasks.append(loop.create_task(outbound.run()))
    endpoints = {name: _address(listener) for name, listener in listeners.items()}
    if inbound is not None:
        endpoints["smtp"] = inbound.address
    nameserver = None
    if "dns" in services:
        # The local runtime's one resolver answers for every organization applied together.
        zones = load_zones(sorted(config_path.parent.parent.parent.glob("*/zones/*.zone")))
        nameserver = NameServer(Authority(zones))
        host, port = await nameserver.start(bind, ports["dns"])
        endpoints["dns"] = f"{host}:{port}"
    _write_endpoints(state / "hosts" / config["server"]["name"], endpoints)

    def reload() -> None:
        """SIGHUP: the shared artifacts (GAL, zones) of the state's current serial."""
        current = _current(state, config_path)
        mta.router = current_router(config, state, config_path)
        if inbound is not None:
            inbound.reload()
        if nameserver is not None:
            nameserver.authority = Authority(
                load_zones(sorted(current.parents[2].glob("*/zones/*.zone")))
            )

    loop.add_signal_handler(signal.SIGHUP, reload)
    print("ready " + " ".join(f"{k}={v}" for k, v in sorted(endpoints.items())), flush=True)
    await stop.wait()
    if inbound is not None:
        await inbound.stop()
    for task in tasks:
        task.cancel()
    if nameserver is not None:
        await nameserver.stop()
    for listener in listeners.values():
        listener.close()
        await listener.wait_closed()


def steady_heap() -> None:
    """What a process loaded to serve (its config, the GAL, the GWART) stays until it exits:
    out of the cyclic collector's sight (gc.freeze), which need not walk it again and again;
    and the young generation collected every 20,000 allocations instead of 700, as a message
    makes thousands (measured with the seed's organization: 1 to 3% less CPU a message). The
    few cycles an SMTP session leaves (aiosmtpd's tables of bound methods) are still
    collected."""
    gc.freeze()
    gc.set_threshold(20_000)


def _mta(config: dict[str, Any], config_path: Path, state: Path) -> Mta:
    """The host's MTA over its store, its queue recovered before anything is queued."""
    store = store_for(config, state) if "pop3" in config["server"]["services"] else None
    accounts = Pop3Accounts(accounts_from_host(config))
    router = Router.load(config, config_path.parent.parent)
    mta = Mta(config, router, state, store, accounts, endpoints_in(state))
    if recovered := mta.recover():
        print(f"queue: {len(recovered)} entries recovered after a crash", file=sys.stderr)
    return mta


@dataclass
class SmtpInbound:
    """The IMS's SMTP port: served by worker processes (see imsworker), or in this one."""

    server: asyncio.Server | None = None
    workers: ImsWorkers | None = None

    @classmethod
    async def start(
        cls,
        mta: Mta,
        accounts: Pop3Accounts,
        config: dict[str, Any],
        *,
        config_path: Path,
        state: Path,
        address: tuple[str, int],
    ) -> SmtpInbound:
        context = tls_context(config, state)  # made here first: workers only read it
        if count := worker_count():
            return cls(workers=ImsWorkers.start(mta, config_path, state, address, count))
        handler = InboundHandler(mta, config["ims"], accounts)
        server = await asyncio.get_running_loop().create_server(
            lambda: smtp_server(handler, config["ims"], context), *address
        )
        return cls(server=server)

    @property
    def address(self) -> str:
        return self.workers.address if self.workers else _address(self._server)

    @property
    def _server(self) -> asyncio.Server:
        assert self.server is not None
        return self.server

    def reload(self) -> None:
        if self.workers is not None:
            self.workers.reload()

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
        else:
            self._server.close()
            await self._server.wait_closed()


def current_router(config: dict[str, Any], state: Path, config_path: Path) -> Router:
    """The router over the GAL of the state's current serial (SIGHUP's reload)."""
    return Router.load(config, _current(state, config_path).parent.parent)


def _current(state: Path, config_path: Path) -> Path:
    """This host's config in the state's current serial (apply moves it to a new folder)."""
    serial = json.loads((state / "state.json").read_text(encoding="utf-8"))["serial"]
    organization = config_path.parent.parent.name
    return state / "artifacts" / str(serial) / organization / "hosts" / config_path.name


def _address(listener: asyncio.Server) -> str:
    host, port = listener.sockets[0].getsockname()[:2]
    return f"{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailwright-host", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the host's compiled hosts/<server>.json")
    parser.add_argument("--state", type=Path, required=True, help="the state directory")
    parser.add_argument("--bind", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--pop3-port", type=int, default=110)
    parser.add_argument("--transfer-port", type=int, default=7025)
    parser.add_argument("--dns-port", type=int, default=53)
    parser.add_argument("--smtp-port", type=int, default=25)
    args = parser.parse_args(argv)
    ports = {
        "pop3": args.pop3_port,
        "transfer": args.transfer_port,
        "dns": args.dns_port,
        "smtp": args.smtp_port,
    }
    try:
        uvloop.run(serve(args.config, args.state, args.bind, ports))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
