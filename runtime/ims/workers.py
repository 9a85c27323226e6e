"""IMS inbound workers: processes that share the host's SMTP port and queue into its MTA.

    python -m mailwright.runtime.ims.workers BUNDLE --data DIR --fd N [--serial N]

One Python process spends a core on aiosmtpd's protocol work alone, so on a machine with
several cores the host binds the SMTP socket and starts workers that all accept on it (the
pre-fork model of Postfix's smtpd processes). Each worker applies the same InboundHandler
policy and queues accepted mail durably into the host's queue, exactly as the host's MTA does,
then writes `queued <entry id>` on stdout; the host's MTA adopts the entry and delivers it.

The host speaks to its workers over their stdin: `reload <serial> <bundle>` when the host
reloads (the worker reads that bundle, its GAL and GWART, takes in the accounts and connector
settings for the sessions that start from then on, and answers `reloaded <serial>` on stdout),
and end of file when the host is gone, even killed: the worker then exits, as on SIGTERM. When a
worker dies the host adopts whatever is queued on disk (an entry queued and acknowledged just
before may never have been announced) and starts another, on the host's current config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import uvloop

from mailwright.runtime import logs
from mailwright.runtime.auth.accounts import Accounts
from mailwright.runtime.host.snapshot import Snapshot, steady_heap
from mailwright.runtime.ims.inbound import InboundHandler
from mailwright.runtime.ims.smtpserver import smtp_server
from mailwright.runtime.mta.agent import Mta
from mailwright.runtime.mta.queue import QueueEntry

log = logging.getLogger("mailwright.ims")

WORKERS_ENV = "MAILWRIGHT_IMS_WORKERS"
RESTART_DELAY = 1.0
# How long a worker may take to reload before it is replaced by one started on the new config.
RELOAD_TIMEOUT = 30.0
NO_SERIAL = "-"  # on the wire, for a host started on a config outside any serial


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
        _answer(f"queued {entry.id}")


class ImsWorkers:
    """The host's side: the shared listening socket and the workers serving it, each on the
    serial of the host config it runs."""

    def __init__(
        self, mta: Mta, snapshot: Snapshot, data: Path, sock: socket.socket, count: int
    ) -> None:
        self.mta = mta
        self.data = data
        self.socket = sock
        self.config = (snapshot.path, snapshot.serial)  # what new workers start on
        self.running: dict[asyncio.subprocess.Process, int | None] = {}  # worker -> serial
        self._changed = asyncio.Event()  # a worker started, answered or ended
        self._stopping = False
        self._tasks = [asyncio.get_running_loop().create_task(self._keep()) for _ in range(count)]

    @classmethod
    def start(
        cls, mta: Mta, snapshot: Snapshot, data: Path, address: tuple[str, int], count: int
    ) -> ImsWorkers:
        return cls(mta, snapshot, data, socket.create_server(address, backlog=1024), count)

    @property
    def address(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"{host}:{port}"

    def _command(self) -> list[str]:
        config, serial = self.config
        command = [sys.executable, "-m", "mailwright.runtime.ims.workers", str(config)]
        command += ["--data", str(self.data), "--fd", str(self.socket.fileno())]
        return command + ([] if serial is None else ["--serial", str(serial)])

    async def _keep(self) -> None:
        """One worker, started again whenever it dies."""
        while not self._stopping:
            serial = self.config[1]
            process = await asyncio.create_subprocess_exec(
                *self._command(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(self.socket.fileno(),),
            )
            self._runs(process, serial)
            assert process.stdout is not None
            async for line in process.stdout:
                self._announced(process, line)
            await process.wait()
            self._ended(process)
            await self.mta.rescan()
            if not self._stopping:
                log.warning("IMS worker %d exited (%s)", process.pid, process.returncode)
                await asyncio.sleep(RESTART_DELAY)

    def _runs(self, process: asyncio.subprocess.Process, serial: int | None) -> None:
        self.running[process] = serial
        self._changed.set()

    def _ended(self, process: asyncio.subprocess.Process) -> None:
        self.running.pop(process, None)
        self._changed.set()

    def _announced(self, process: asyncio.subprocess.Process, line: bytes) -> None:
        verb, _, rest = line.decode("utf-8", "replace").strip().partition(" ")
        if verb == "queued":
            entry = self.mta.queue.read(rest)
            if entry is not None:  # None: already delivered and gone, found by a rescan
                self.mta.adopt(entry)
        elif verb == "reloaded":
            self._runs(process, _serial_from(rest))
        elif verb == "reload-failed":
            log.error("IMS worker %d could not reload: %s", process.pid, rest)
            process.terminate()  # its replacement starts on the new config

    async def reload(self, config: Path, serial: int | None) -> None:
        """Every worker on the host's reloaded config (`serial`): each is told, and this returns
        once each says it runs it. One that fails, or does not answer in time, is replaced by
        one started on the new config (as is one that dies meanwhile)."""
        self.config = (config, serial)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RELOAD_TIMEOUT
        told: set[asyncio.subprocess.Process] = set()
        while True:
            self._changed.clear()
            behind = {p for p, s in self.running.items() if s != serial}
            if not behind:
                return
            for process in behind - told:
                await _tell(process, f"reload {_serial_text(serial)} {config}")
            told |= behind
            if loop.time() > deadline:
                for process in behind:
                    process.terminate()
                deadline = loop.time() + RELOAD_TIMEOUT
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())

    async def stop(self) -> None:
        self._stopping = True
        for process in list(self.running):
            process.terminate()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.socket.close()


async def _tell(process: asyncio.subprocess.Process, command: str) -> None:
    """A line to a worker's stdin; a worker that is gone is replaced anyway."""
    assert process.stdin is not None
    with contextlib.suppress(ConnectionError):
        process.stdin.write(command.encode("utf-8") + b"\n")
        await process.stdin.drain()


def _serial_text(serial: int | None) -> str:
    return NO_SERIAL if serial is None else str(serial)


def _serial_from(text: str) -> int | None:
    return None if text == NO_SERIAL else int(text)


async def serve(bundle: Path, data: Path, fd: int) -> None:
    # Imported here: the host module imports this one's ImsWorkers.
    from mailwright.runtime.host.process import tls_context  # noqa: PLC0415

    snapshot = Snapshot.read(bundle)
    accounts = Accounts(snapshot.tables.accounts)
    # The front end only queues: it transfers nothing, so it needs no peers.
    front = FrontEnd(snapshot.config, snapshot.router, data, None, accounts, lambda _: None)
    handler = InboundHandler(front, snapshot.config.connector, accounts)
    steady_heap()
    context = tls_context(snapshot, data)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: smtp_server(handler, handler.settings, context), sock=socket.socket(fileno=fd)
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # The host says what to reload (over stdin); a SIGHUP of the worker's own must not end it.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    host = loop.create_task(_follow_host(sys.stdin.buffer, stop, front, handler))
    await stop.wait()
    host.cancel()
    server.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 5.0)


async def _follow_host(
    pipe: Any, stop: asyncio.Event, front: FrontEnd, handler: InboundHandler
) -> None:
    """The host's commands on our stdin, one at a time; `stop` set when the host's end closes."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    while line := await reader.readline():
        verb, _, rest = line.decode("utf-8").strip().partition(" ")
        if verb == "reload":
            serial, _, config = rest.partition(" ")
            _answer(await _reload(Path(config), _serial_from(serial), front, handler))
    stop.set()


async def _reload(
    config: Path, serial: int | None, front: FrontEnd, handler: InboundHandler
) -> str:
    """The host's reloaded config taken in, as the host does (see host.Host.reload)."""
    loop = asyncio.get_running_loop()
    try:
        snapshot = await loop.run_in_executor(None, Snapshot.read, config)
    except Exception as exc:  # a broken config may raise anything its readers raise
        return f"reload-failed {type(exc).__name__}: {exc}"
    front.reload(snapshot.config, snapshot.router, snapshot.tables)
    handler.configure(snapshot.config.connector)
    steady_heap()
    return f"reloaded {_serial_text(serial)}"


def _answer(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mailwright-ims-worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("bundle", type=Path, help="the host's bundle")
    parser.add_argument("--data", type=Path, required=True, help="the host's data folder")
    parser.add_argument("--fd", type=int, required=True, help="the listening SMTP socket")
    parser.add_argument("--serial", type=int, help="the serial of the bundle, for the host")
    args = parser.parse_args(argv)
    logs.setup(f"ims-worker {os.getpid()}")
    uvloop.run(serve(args.bundle, args.data, args.fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
