"""Shared fixtures of the runtime tests: real POP3 servers on loopback, the seed.

Servers run in-process on an event loop of their own in a background thread, so the tests can
talk to them with blocking clients (poplib, raw sockets, curl, fetchmail). Test modules cannot
import this file (no packages under tests/), so everything is handed out as fixtures whose types
are the standard library's or mailwright's.
"""

from __future__ import annotations

import asyncio
import json
import poplib
import ssl
import subprocess
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import argon2
import pytest

from mailwright.runtime.auth.accounts import Account, Accounts, accounts_from_host
from mailwright.runtime.contract import HostConfig
from mailwright.runtime.store.mailstore import MailStore
from mailwright.runtime.store.pop3 import Pop3Server, Pop3Session
from mailwright.runtime.tls import self_signed, server_context
from tests.helpers import MAILWRIGHT, SEED_SPECS

HOST = "127.0.0.1"
TIMEOUT = 10.0
T = TypeVar("T")

# Cheap argon2id parameters: the seed's hashes take ~0.4 s each to verify, too slow for a test
# that logs in dozens of times. verify_password reads the parameters from the hash itself.
_FAST_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


# --- the seed -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def seed_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mailwright compile` of the two seed organizations."""
    out = tmp_path_factory.mktemp("seed-artifacts")
    subprocess.run(
        [MAILWRIGHT, "compile", *map(str, SEED_SPECS), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


@pytest.fixture(scope="session")
def arlington_path(seed_artifacts: Path) -> Path:
    return seed_artifacts / "Minasi" / "hosts" / "arlington.json"


@pytest.fixture(scope="session")
def arlington(arlington_path: Path) -> dict[str, Any]:
    """Arlington's host config: mark (POP3 on) and paula (POP3 off)."""
    config: dict[str, Any] = json.loads(arlington_path.read_text(encoding="utf-8"))
    return config


@pytest.fixture(scope="session")
def seed_accounts(arlington: dict[str, Any]) -> dict[str, Account]:
    """Arlington's accounts as compiled, with the seed's own argon2id hashes."""
    return accounts_from_host(HostConfig.from_json(arlington))


@pytest.fixture(scope="session")
def fast_accounts(seed_accounts: dict[str, Account]) -> dict[str, Account]:
    """Arlington's accounts with the same demo passwords (`demo-<alias>`) under cheap hashes."""
    return {
        alias: replace(account, password_hash=_FAST_HASHER.hash(f"demo-{alias}"))
        for alias, account in seed_accounts.items()
    }


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"), "arlington.minasi.com")


@pytest.fixture
def server_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    return server_context(*tls_files)


@pytest.fixture
def client_tls() -> ssl.SSLContext:
    """A client context that accepts the self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --- servers on a background event loop -----------------------------------------------------


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.close()


class _Listening:
    def __init__(self, listener: asyncio.Server, sessions: list[Pop3Session]) -> None:
        self.listener = listener
        self.sessions = sessions

    async def stop(self) -> None:
        self.listener.close()
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()
        workers = [s._worker for s in self.sessions if s._worker is not None]
        if workers:
            await asyncio.wait(workers, timeout=TIMEOUT)
        await self.listener.wait_closed()


@pytest.fixture
def server_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A running event loop in a background thread; the servers of one test live on it."""
    thread = _LoopThread()
    yield thread.loop
    thread.close()


@pytest.fixture
def listening(server_loop: asyncio.AbstractEventLoop) -> Iterator[dict[int, _Listening]]:
    """The servers a test started, by port; whatever is still running is stopped at the end."""
    running: dict[int, _Listening] = {}
    yield running
    for listening in running.values():
        asyncio.run_coroutine_threadsafe(listening.stop(), server_loop).result(TIMEOUT)


@pytest.fixture
def serve(
    server_loop: asyncio.AbstractEventLoop, listening: dict[int, _Listening]
) -> Callable[[Pop3Server], int]:
    """Start a Pop3Server on 127.0.0.1 and an ephemeral port; returns the port."""

    async def start(server: Pop3Server) -> int:
        sessions: list[Pop3Session] = []

        def session() -> Pop3Session:
            sessions.append(Pop3Session(server))
            return sessions[-1]

        listener = await server_loop.create_server(session, HOST, 0)
        port: int = listener.sockets[0].getsockname()[1]
        listening[port] = _Listening(listener, sessions)
        return port

    def serve(server: Pop3Server) -> int:
        return asyncio.run_coroutine_threadsafe(start(server), server_loop).result(TIMEOUT)

    return serve


@pytest.fixture
def serve_pop3(
    fast_accounts: dict[str, Account],
    serve: Callable[[Pop3Server], int],
    server_tls: ssl.SSLContext,
) -> Callable[[MailStore, bool], int]:
    """A POP3 server over `store` for the seed's accounts (STLS offered if `tls`); its port."""

    def start(store: MailStore, tls: bool) -> int:
        accounts = Accounts(fast_accounts)
        return serve(Pop3Server(accounts, store, server_tls if tls else None))

    return start


@pytest.fixture
def stop_server(
    server_loop: asyncio.AbstractEventLoop, listening: dict[int, _Listening]
) -> Callable[[int], None]:
    """Stop the server on a port, listener and every session, as a process exit would."""

    def stop(port: int) -> None:
        stopping = listening.pop(port).stop()
        asyncio.run_coroutine_threadsafe(stopping, server_loop).result(TIMEOUT)

    return stop


@pytest.fixture
def session_tasks(server_loop: asyncio.AbstractEventLoop) -> Callable[[], int]:
    """How many tasks are alive on the server loop (each session has one worker task)."""

    async def count() -> int:
        return len(asyncio.all_tasks() - {asyncio.current_task()})

    def tasks() -> int:
        return asyncio.run_coroutine_threadsafe(count(), server_loop).result(TIMEOUT)

    return tasks


@pytest.fixture
def connect() -> Iterator[Callable[[int], poplib.POP3]]:
    """A poplib client on a port, closed at the end of the test if it is still open."""
    clients: list[poplib.POP3] = []

    def connect(port: int) -> poplib.POP3:
        clients.append(poplib.POP3(HOST, port, timeout=TIMEOUT))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()
