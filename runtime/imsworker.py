"""IMS inbound workers: processes that share the host's SMTP port and queue into its MTA.

    python -m mailwright.runtime.imsworker CONFIG --state DIR --fd N

One Python process spends a core on aiosmtpd's protocol work alone, so on a machine with
several cores the host binds the SMTP socket and starts workers that all accept on it (the
pre-fork model of Postfix's smtpd processes). Each worker applies the same InboundHandler
policy and queues accepted mail durably into the host's queue, exactly as the host's MTA does,
then writes `queued <entry id>` on stdout; the host's MTA adopts the entry and delivers it.

A worker exits when its stdin closes (the host is gone, even killed) or on SIGTERM, and
re-reads the GAL and the GWART on SIGHUP as the host does. When a worker dies the host adopts
whatever is queued on disk (an entry queued and acknowledged just before may never have been
announced) and starts another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import uvloop

from mailwright.runtime.ims import InboundHandler, smtp_server
from mailwright.runtime.mta import Mta
from mailwright.runtime.pop3 import Pop3Accounts, accounts_from_host
from mailwright.runtime.queue import QueueEntry
from mailwright.runtime.router import Router
from mailwright.runtime.transfer import endpoints_in

WORKERS_ENV = "MAILWRIGHT_IMS_WORKERS"
RESTART_DELAY = 1.0


def worker_count() -> int:
    """MAILWRIGHT_IMS_WORKERS, else one a CPU (up to 4); 0 (SMTP in the host) on one CPU."""
    configured = os.environ.get(WORKERS_ENV, "auto")
    if configured != "auto":
        if not configured.isdigit():
            raise ValueError(f"{WORKERS_ENV}={configured!r}: a number of processes, or auto")
        return int(configured)
    cpus = os.cpu_count() or 1
    return min(cpus, 4) if cpus > 1 else 0


class FrontEnd(Mta):
    """The MTA's accepting half: what it queues, the host's MTA delivers."""

    def adopt(self, entry: QueueEntry) -> None:
        sys.stdout.write(f"queued {entry.id}\n")
        sys.stdout.flush()


class ImsWorkers:
    """The host's side: the shared listening socket and the workers serving it."""

    def __init__(self, mta: Mta, command: list[str], sock: socket.socket, count: int) -> None:
        self.mta = mta
        self.command = command
        self.socket = sock
        self.processes: list[asyncio.subprocess.Process] = []
        self._stopping = False
        self._tasks = [asyncio.get_running_loop().create_task(self._keep()) for _ in range(count)]

    @classmethod
    def start(
        cls, mta: Mta, config_path: Path, state: Path, address: tuple[str, int], count: int
    ) -> ImsWorkers:
        sock = socket.create_server(address, backlog=1024)
        command = [
            sys.executable,
            "-m",
            "mailwright.runtime.imsworker",
            str(config_path),
            "--state",
            str(state),
            "--fd",
            str(sock.fileno()),
        ]
        return cls(mta, command, sock, count)

    @property
    def address(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"{host}:{port}"

    async def _keep(self) -> None:
        """One worker, started again whenever it dies."""
        while not self._stopping:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(self.socket.fileno(),),
            )
            self.processes.append(process)
            assert process.stdout is not None
            async for line in process.stdout:
                self._announced(line)
            await process.wait()
            self.processes.remove(process)
            await self.mta.rescan()
            if not self._stopping:
                print(f"IMS worker {process.pid} exited ({process.returncode})", file=sys.stderr)
                await asyncio.sleep(RESTART_DELAY)

    def _announced(self, line: bytes) -> None:
        verb, _, entry_id = line.decode("ascii", "replace").strip().partition(" ")
        entry = self.mta.queue.read(entry_id) if verb == "queued" else None
        if entry is not None:  # None: already delivered and gone, found by a rescan
            self.mta.adopt(entry)

    def reload(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        self._stopping = True
        for process in self.processes:
            process.terminate()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.socket.close()


async def serve(config_path: Path, state: Path, fd: int) -> None:
    # Imported here: the host module imports this one's ImsWorkers.
    from mailwright.runtime.host import (  # noqa: PLC0415
        current_router,
        steady_heap,
        tls_context,
    )

    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    accounts = Pop3Accounts(accounts_from_host(config))
    router = Router.load(config, config_path.parent.parent)
    front = FrontEnd(config, router, state, None, accounts, endpoints_in(state))
    handler = InboundHandler(front, config["ims"], accounts)
    steady_heap()
    context = tls_context(config, state)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: smtp_server(handler, config["ims"], context), sock=socket.socket(fileno=fd)
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: setattr(front, "router", current_router(config, state, config_path))
    )
    watch = loop.create_task(_until_closed(sys.stdin.buffer, stop))
    await stop.wait()
    watch.cancel()
    server.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 5.0)


async def _until_closed(pipe: Any, stop: asyncio.Event) -> None:
    """Set `stop` when the host's end of our stdin closes."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), pipe
    )
    await reader.read()
    stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mailwright-ims-worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("config", type=Path, help="the host's compiled hosts/<server>.json")
    parser.add_argument("--state", type=Path, required=True, help="the state directory")
    parser.add_argument("--fd", type=int, required=True, help="the listening SMTP socket")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.config, args.state, args.fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
