"""The POP3 server of a store host (RFC 1939, with RFC 2449 CAPA, RFC 5034 SASL PLAIN, RFC 2595
STLS and RFC 3206 response codes).

Protocol and policy are apart, as in aiosmtpd: `Pop3Session` parses lines and answers with the
RFC's replies from `pop3_<VERB>` methods; `Accounts` decides who may log in. Each session
runs its commands one at a time from a queue, so pipelined commands are answered in order.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import cast

from mailwright.runtime.auth.accounts import DEFAULT_IDLE_TIMEOUT, Account, Accounts
from mailwright.runtime.store.mailstore import MailStore, StoredMessage

# RFC 2449 §4: a command line is at most 255 octets, CRLF included.
MAX_COMMAND_LINE = 255
CRLF = b"\r\n"
SMALL_MESSAGE = 64 * 1024  # read inline, without a thread

OK_SIGNOFF = "+OK mailwright POP3 server signing off"
ERR_AUTH = "-ERR [AUTH] invalid user name or password"
ERR_STATE = "-ERR command not valid in this state"


def dot_stuffed(body: bytes) -> bytes:
    """A stored message (LF line ends, see store.to_lf) as a POP3 multi-line body: CRLF line
    ends, leading dots doubled, then the terminating "." line (RFC 1939 §3). The CR of a line
    stored as "x\r\n" stays part of the line: stored text is not converted twice."""
    if body and not body.endswith(b"\n"):
        body += b"\n"
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\n.", b"\n..").replace(b"\n", CRLF) + b"." + CRLF


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


@dataclass
class Maildrop:
    messages: list[StoredMessage]
    deleted: set[int] = field(default_factory=set)

    def get(self, argument: str) -> tuple[int, StoredMessage] | None:
        """A message by its number, unless the number is bad or the message is deleted."""
        if not argument.isdigit():
            return None
        number = int(argument)
        if not 1 <= number <= len(self.messages) or number in self.deleted:
            return None
        return number, self.messages[number - 1]

    def live(self) -> list[tuple[int, StoredMessage]]:
        return [(n, m) for n, m in enumerate(self.messages, 1) if n not in self.deleted]


class Pop3Server:
    def __init__(
        self,
        accounts: Accounts,
        store: MailStore,
        tls: ssl.SSLContext | None = None,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.accounts = accounts
        self.store = store
        self.tls = tls
        self.idle_timeout = idle_timeout
        # Maildrops held by a session (RFC 1939 §4): the store's, which moves none of them.
        self.locked = store.locked
        self.version = version("mailwright")

    async def start(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: Pop3Session(self), host, port)


Handler = Callable[["Pop3Session", str], Awaitable[str | None]]


class Pop3Session(asyncio.Protocol):
    def __init__(self, server: Pop3Server) -> None:
        self.server = server
        self.state = State.AUTHORIZATION
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.user: str | None = None
        self.account: Account | None = None
        self.maildrop = Maildrop([])
        self.tls_active = False
        self._buffer = b""
        self._discarding = False  # inside a line that grew past the limit
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._writable = asyncio.Event()
        self._writable.set()
        self._idle: asyncio.TimerHandle | None = None
        self._worker: asyncio.Task[None] | None = None
        self._lost = False

    # --- transport events ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport (uvloop's too)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self._send(f"+OK mailwright POP3 server version {self.server.version} ready.")
        self._touch()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self._touch()
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
            if self._discarding or len(line) + 1 > MAX_COMMAND_LINE:
                self._discarding = False
                self._lines.put_nowait(b"\x00too-long")
                continue
            self._lines.put_nowait(line.rstrip(b"\r"))
            if self._starts_tls(line):
                # RFC 2595 §4 (and the STARTTLS injection attacks): nothing the client sent
                # after STLS, before the handshake, may be acted upon. The rest stays unread
                # until STLS is answered: dropped if TLS starts, read if STLS is refused.
                if self.transport is not None:
                    self.transport.pause_reading()
                return
        if len(self._buffer) > MAX_COMMAND_LINE:
            self._buffer, self._discarding = b"", True

    def _starts_tls(self, line: bytes) -> bool:
        return line.strip().upper() == b"STLS" and self._can_start_tls()

    def _can_start_tls(self) -> bool:
        return (
            self.server.tls is not None
            and not self.tls_active
            and self.state is State.AUTHORIZATION
        )

    def connection_lost(self, exc: Exception | None) -> None:
        # RFC 1939 §6: without QUIT the session never enters UPDATE; nothing is deleted.
        self._lost = True
        self._release()
        self._writable.set()  # a RETR waiting for the socket to drain must not wait forever
        if self._idle is not None:
            self._idle.cancel()
        self._lines.put_nowait(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- plumbing ------------------------------------------------------------------------------

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        timeout = self.account.idle_timeout if self.account else self.server.idle_timeout
        self._idle = asyncio.get_running_loop().call_later(timeout, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _send(self, line: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(line.encode("utf-8") + CRLF)

    async def _send_multiline(self, status: str, body: bytes) -> None:
        """Status line, then the body with CRLF line ends and leading dots doubled, then "."
        (RFC 1939 §3)."""
        if self.transport is not None and not self.transport.is_closing():
            # One write for status and body: a POP3 client waits for both anyway.
            self.transport.write(status.encode("utf-8") + CRLF + dot_stuffed(body))
            await self._writable.wait()

    async def _run(self) -> None:
        while (line := await self._lines.get()) is not None:
            reply = await self._dispatch(line)
            if reply is not None:
                self._send(reply)
            if self.state is State.UPDATE:
                self._close()
                return

    async def _dispatch(self, line: bytes) -> str | None:
        if line == b"\x00too-long":
            return f"-ERR command line longer than {MAX_COMMAND_LINE} octets"
        text = line.decode("latin-1")
        verb, _, argument = text.partition(" ")
        handler: Handler | None = getattr(Pop3Session, f"pop3_{verb.upper()}", None)
        if not verb.isalpha() or handler is None:
            return "-ERR unknown command"
        return await handler(self, argument.strip())

    def _release(self) -> None:
        if self.account is not None:
            self.server.locked.discard(self.account.alias)

    async def _next_line(self) -> str | None:
        line = await self._lines.get()
        return None if line is None else line.decode("latin-1")

    # --- AUTHORIZATION state ---------------------------------------------------------------------

    async def pop3_CAPA(self, argument: str) -> str | None:
        # RFC 2449 §5; after STLS the list is sent anew without STLS (RFC 2595 §4).
        capabilities = ["TOP", "USER", "UIDL", "PIPELINING", "RESP-CODES", "AUTH-RESP-CODE"]
        capabilities += ["SASL PLAIN", f"IMPLEMENTATION mailwright-{self.server.version}"]
        if self._can_start_tls():
            capabilities.append("STLS")
        await self._send_multiline("+OK Capability list follows", "\n".join(capabilities).encode())
        return None

    async def pop3_STLS(self, argument: str) -> str | None:
        if not self._can_start_tls() or self.transport is None or self.server.tls is None:
            if self.transport is not None and not self.transport.is_closing():
                # data_received held back what followed STLS; answer it after this refusal.
                self.transport.resume_reading()
                self.data_received(b"")
            return "-ERR STLS not available" if self.state is State.AUTHORIZATION else ERR_STATE
        self._send("+OK Begin TLS negotiation")
        # RFC 2595 §4: forget everything learned before the handshake, and do it now: what
        # the client sends with its last handshake flight reaches data_received before
        # start_tls returns.
        self.tls_active, self.user, self._buffer = True, None, b""
        while not self._lines.empty():
            self._lines.get_nowait()
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport, self, self.server.tls, server_side=True
            )
        except (OSError, ssl.SSLError):
            self._close()
            return None
        if transport is None:
            return None
        self.transport = transport
        return None

    async def pop3_USER(self, argument: str) -> str | None:
        if self.state is not State.AUTHORIZATION:
            return ERR_STATE
        if not argument:
            return "-ERR USER needs a name"
        self.user = argument
        return "+OK send PASS"

    async def pop3_PASS(self, argument: str) -> str | None:
        if self.state is not State.AUTHORIZATION:
            return ERR_STATE
        if self.user is None:
            return "-ERR USER first"
        user, self.user = self.user, None
        return await self._login(user, argument)

    async def pop3_AUTH(self, argument: str) -> str | None:
        if self.state is not State.AUTHORIZATION:
            return ERR_STATE
        mechanism, _, initial = argument.partition(" ")
        if not mechanism:
            await self._send_multiline("+OK SASL mechanisms follow", b"PLAIN")
            return None
        if mechanism.upper() != "PLAIN":
            return "-ERR unsupported SASL mechanism"
        if not initial:
            self._send("+ ")
            initial = await self._next_line() or "*"
        if initial == "*":
            return "-ERR authentication cancelled"
        return await self._auth_plain("" if initial == "=" else initial)

    async def _auth_plain(self, response: str) -> str:
        # RFC 4616: authzid NUL authcid NUL passwd; we act only as the authenticated user.
        try:
            fields = base64.b64decode(response, validate=True).decode("utf-8").split("\x00")
        except (binascii.Error, UnicodeDecodeError):
            return "-ERR invalid base64 in the SASL response"
        if len(fields) != 3 or (fields[0] and fields[0] != fields[1]):
            return ERR_AUTH
        return await self._login(fields[1], fields[2])

    async def _login(self, user: str, password: str) -> str:
        account = await self.server.accounts.authenticate(self.peer, user, password)
        if self._lost:
            return ERR_AUTH  # nobody to answer, and the maildrop must not stay locked
        if account is None:
            return ERR_AUTH
        if not account.enabled:
            return "-ERR [AUTH] POP3 is disabled for this mailbox"
        if account.alias in self.server.locked:
            return "-ERR [IN-USE] the maildrop is in use by another session"
        self.server.locked.add(account.alias)
        self.account = account
        loop = asyncio.get_running_loop()
        mailbox = self.server.store.mailbox(account.alias)
        self.maildrop = Maildrop(await loop.run_in_executor(None, mailbox.messages))
        self.state = State.TRANSACTION
        self._touch()
        total = sum(m.size for m in self.maildrop.messages)
        return f"+OK maildrop has {len(self.maildrop.messages)} messages ({total} octets)"

    async def pop3_QUIT(self, argument: str) -> str | None:
        if self.state is not State.TRANSACTION:
            self.state = State.UPDATE
            return OK_SIGNOFF
        # RFC 1939 §6: deletions happen only here, in the UPDATE state.
        self.state = State.UPDATE
        doomed = [m for n, m in enumerate(self.maildrop.messages, 1) if n in self.maildrop.deleted]
        assert self.account is not None
        mailbox = self.server.store.mailbox(self.account.alias)
        try:
            await asyncio.get_running_loop().run_in_executor(None, mailbox.delete, doomed)
        except OSError:
            return "-ERR [SYS/TEMP] some deleted messages were not removed"
        finally:
            self._release()
        left = len(self.maildrop.messages) - len(doomed)
        return f"{OK_SIGNOFF} ({left} messages left)"

    # --- TRANSACTION state -----------------------------------------------------------------------

    def _transaction(self) -> str | None:
        return None if self.state is State.TRANSACTION else ERR_STATE

    async def pop3_STAT(self, argument: str) -> str | None:
        if refusal := self._transaction():
            return refusal
        live = self.maildrop.live()
        return f"+OK {len(live)} {sum(m.size for _, m in live)}"

    async def pop3_LIST(self, argument: str) -> str | None:
        return await self._listing(argument, lambda m: str(m.size))

    async def pop3_UIDL(self, argument: str) -> str | None:
        return await self._listing(argument, lambda m: m.uid)

    async def _listing(self, argument: str, value: Callable[[StoredMessage], str]) -> str | None:
        if refusal := self._transaction():
            return refusal
        if argument:
            found = self.maildrop.get(argument)
            return f"+OK {found[0]} {value(found[1])}" if found else "-ERR no such message"
        live = self.maildrop.live()
        body = "\n".join(f"{n} {value(m)}" for n, m in live).encode()
        await self._send_multiline(f"+OK {len(live)} messages", body)
        return None

    async def pop3_RETR(self, argument: str) -> str | None:
        if refusal := self._transaction():
            return refusal
        found = self.maildrop.get(argument)
        if found is None:
            return "-ERR no such message"
        content = await self._read(found[1])
        if content is None:
            return "-ERR [SYS/TEMP] message no longer readable"
        await self._send_multiline(f"+OK {found[1].size} octets", content)
        return None

    async def pop3_TOP(self, argument: str) -> str | None:
        if refusal := self._transaction():
            return refusal
        number, _, count = argument.partition(" ")
        found = self.maildrop.get(number)
        if found is None or not count.strip().isdigit():
            return "-ERR usage: TOP message lines" if found else "-ERR no such message"
        content = await self._read(found[1])
        if content is None:
            return "-ERR [SYS/TEMP] message no longer readable"
        header, separator, body = content.partition(b"\n\n")
        kept = body.split(b"\n")[: int(count)] if body else []
        await self._send_multiline(
            "+OK top of message follows", header + separator + b"\n".join(kept)
        )
        return None

    async def _read(self, message: StoredMessage) -> bytes | None:
        try:
            if message.size <= SMALL_MESSAGE:
                # Mail is mostly small and in the page cache: a thread round-trip costs more.
                return message.path.read_bytes()
            return await asyncio.get_running_loop().run_in_executor(None, message.path.read_bytes)
        except OSError:
            return None

    async def pop3_DELE(self, argument: str) -> str | None:
        if refusal := self._transaction():
            return refusal
        found = self.maildrop.get(argument)
        if found is None:
            return "-ERR no such message"
        self.maildrop.deleted.add(found[0])
        return f"+OK message {found[0]} deleted"

    async def pop3_NOOP(self, argument: str) -> str | None:
        return self._transaction() or "+OK"

    async def pop3_RSET(self, argument: str) -> str | None:
        if refusal := self._transaction():
            return refusal
        self.maildrop.deleted.clear()
        return f"+OK maildrop has {len(self.maildrop.messages)} messages"
