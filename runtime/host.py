"""One host's runtime process: reads its compiled `hosts/<server>.json`, serves its roles.

    python -m mailwright.runtime.host CONFIG --state DIR [--bind 127.0.0.1] [--pop3-port N]

So far the store role: the mailbox store and its POP3 server. The process prints one line
`ready pop3=HOST:PORT` once it listens, and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from mailwright.runtime.pop3 import Pop3Accounts, Pop3Server, accounts_from_host
from mailwright.runtime.store import MailStore
from mailwright.runtime.tls import self_signed, server_context


def store_for(config: dict[str, Any], state: Path) -> MailStore:
    server = config["server"]["name"]
    limits = {m["alias"]: m["size_limit"] for m in config["mailboxes"]}
    return MailStore(state / "hosts" / server / "store", limits)


def pop3_server(config: dict[str, Any], state: Path) -> Pop3Server:
    tls = config.get("tls")
    if tls:
        certificate, key = Path(tls["certificate"]), Path(tls["private_key"])
    else:
        certificate, key = self_signed(
            state / "hosts" / config["server"]["name"], config["server"]["fqdn"]
        )
    return Pop3Server(
        Pop3Accounts(accounts_from_host(config)),
        store_for(config, state),
        server_context(certificate, key),
        idle_timeout=float(config["pop3"]["idle_timeout"]),
    )


async def serve(config: dict[str, Any], state: Path, bind: str, pop3_port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    listeners = []
    if "pop3" in config["server"]["services"]:
        listener = await pop3_server(config, state).start(bind, pop3_port)
        listeners.append(listener)
        host, port = listener.sockets[0].getsockname()[:2]
        print(f"ready pop3={host}:{port}", flush=True)
    await stop.wait()
    for listener in listeners:
        listener.close()
        await listener.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailwright-host", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the host's compiled hosts/<server>.json")
    parser.add_argument("--state", type=Path, required=True, help="the state directory")
    parser.add_argument("--bind", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--pop3-port", type=int, default=110)
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text(encoding="utf-8"))
    try:
        asyncio.run(serve(config, args.state, args.bind, args.pop3_port))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
