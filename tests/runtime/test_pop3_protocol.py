"""The POP3 server on a raw socket: exact wire bytes, bad input, pipelining, STLS injection."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailwright.runtime.store.mailstore import MailStore, message_uid

ERR_STATE = b"-ERR command not valid in this state\r\n"
ERR_UNKNOWN = b"-ERR unknown command\r\n"
ERR_TOO_LONG = b"-ERR command line longer than 255 octets\r\n"

DOTS = b"From: jane@dcnw.com\r\nSubject: dots\r\n\r\n.\r\n..twice\r\n.leading\r\nend.\r\n"
# On the wire (RFC 1939 §3): leading dots doubled, then the terminating "." line.
DOTS_WIRE = (
    b"From: jane@dcnw.com\r\nSubject: dots\r\n\r\n..\r\n...twice\r\n..leading\r\nend.\r\n.\r\n"
)
PLAIN = b"From: pat@dcnw.com\nSubject: LF only\n\nStored with LF, served with CRLF.\n"
PLAIN_CRLF = PLAIN.replace(b"\n", b"\r\n")
LARGE = b"Subject: large\r\n\r\n" + b"x" * 998 + b"\r\n"
LARGE_COUNT = 8 * 1024  # 8 MiB: far more than the socket buffers hold


class Raw:
    """A POP3 client on a bare socket that reads exactly what the server wrote."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), 10)
        self._data = bytearray()
        self._pos = 0

    @property
    def buffer(self) -> bytes:
        """Received but not yet read."""
        return bytes(self._data[self._pos :])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, end: bytes) -> bytes:
        start = self._pos
        while (found := self._data.find(end, start)) < 0:
            start = max(self._pos, len(self._data) - len(end) + 1)
            data = self.sock.recv(262144)
            if not data:
                raise ConnectionError(f"closed; got {self.buffer!r}")
            self._data += data
        cut = found + len(end)
        answer, self._pos = bytes(self._data[self._pos : cut]), cut
        if self._pos > 1 << 20:
            del self._data[: self._pos]
            self._pos = 0
        return answer

    def line(self) -> bytes:
        return self.until(b"\r\n")

    def multiline(self) -> bytes:
        """The status line and, after +OK, the body through its terminating ".": exact bytes."""
        parts = [self.line()]
        if parts[0].startswith(b"+OK"):
            while parts[-1] != b".\r\n":
                parts.append(self.line())
        return b"".join(parts)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.line()

    def silent(self, seconds: float) -> bool:
        """True when the server sends nothing for that long."""
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(10)
        self._data += data
        return False

    def close(self) -> None:
        self.sock.close()


def start_tls(plain: Raw, context: ssl.SSLContext) -> Raw:
    """The same client after the TLS handshake on its socket."""
    assert plain.buffer == b""
    plain.sock = context.wrap_socket(plain.sock)
    return plain


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    store = MailStore(tmp_path / "store")
    store.deliver("mark", "<dots@dcnw.com>", DOTS)
    store.deliver("mark", "<plain@dcnw.com>", PLAIN)
    return store


@pytest.fixture
def port(store: MailStore, serve_pop3: Callable[[MailStore, bool], int]) -> int:
    return serve_pop3(store, True)


@pytest.fixture
def connect(port: int) -> Iterator[Callable[[], Raw]]:
    clients: list[Raw] = []

    def connect() -> Raw:
        clients.append(Raw(port))
        assert clients[-1].line().startswith(b"+OK mailwright POP3 server version ")
        return clients[-1]

    yield connect
    for client in clients:
        client.close()


def logged_in(connect: Callable[[], Raw]) -> Raw:
    client = connect()
    assert client.command(b"USER mark") == b"+OK send PASS\r\n"
    assert client.command(b"PASS demo-mark").startswith(b"+OK maildrop has ")
    return client


def test_exact_bytes_of_retr_top_list_uidl(connect: Callable[[], Raw]) -> None:
    client = logged_in(connect)
    client.send(b"RETR 1\r\n")
    assert client.multiline() == b"+OK %d octets\r\n" % len(DOTS) + DOTS_WIRE
    client.send(b"RETR 2\r\n")
    assert client.multiline() == b"+OK %d octets\r\n" % len(PLAIN_CRLF) + PLAIN_CRLF + b".\r\n"
    client.send(b"TOP 1 1\r\n")
    assert client.multiline() == (
        b"+OK top of message follows\r\nFrom: jane@dcnw.com\r\nSubject: dots\r\n\r\n..\r\n.\r\n"
    )
    client.send(b"LIST\r\n")
    assert client.multiline() == b"+OK 2 messages\r\n1 %d\r\n2 %d\r\n.\r\n" % (
        len(DOTS),
        len(PLAIN_CRLF),
    )
    client.send(b"UIDL\r\n")
    assert client.multiline() == b"+OK 2 messages\r\n1 %s\r\n2 %s\r\n.\r\n" % (
        message_uid("<dots@dcnw.com>").encode(),
        message_uid("<plain@dcnw.com>").encode(),
    )
    assert client.command(b"STAT") == b"+OK 2 %d\r\n" % (len(DOTS) + len(PLAIN_CRLF))
    assert client.command(b"QUIT").startswith(b"+OK")


def test_commands_are_case_insensitive(connect: Callable[[], Raw]) -> None:
    client = connect()
    assert client.command(b"user mark") == b"+OK send PASS\r\n"
    assert client.command(b"pass demo-mark").startswith(b"+OK")
    assert client.command(b"stat").startswith(b"+OK 2 ")
    assert client.command(b"nOoP") == b"+OK\r\n"


def test_commands_in_the_wrong_state(connect: Callable[[], Raw]) -> None:
    client = connect()
    for command in (b"STAT", b"LIST", b"LIST 1", b"RETR 1", b"DELE 1", b"NOOP", b"RSET"):
        assert client.command(command) == ERR_STATE, command
    for command in (b"TOP 1 0", b"UIDL", b"UIDL 1"):
        assert client.command(command) == ERR_STATE, command
    assert client.command(b"PASS demo-mark") == b"-ERR USER first\r\n"
    assert client.command(b"USER") == b"-ERR USER needs a name\r\n"
    client.command(b"USER mark")
    client.command(b"PASS demo-mark")
    for command in (b"USER mark", b"PASS demo-mark", b"AUTH PLAIN", b"STLS"):
        assert client.command(command) == ERR_STATE, command
    # Bad arguments in the right state.
    assert client.command(b"RETR") == b"-ERR no such message\r\n"
    assert client.command(b"RETR x") == b"-ERR no such message\r\n"
    assert client.command(b"RETR -1") == b"-ERR no such message\r\n"
    assert client.command(b"TOP 1") == b"-ERR usage: TOP message lines\r\n"
    assert client.command(b"TOP 1 x") == b"-ERR usage: TOP message lines\r\n"
    assert client.command(b"QUIT").startswith(b"+OK")


def test_unknown_commands_and_binary_garbage(connect: Callable[[], Raw]) -> None:
    client = connect()
    assert client.command(b"XYZZY") == ERR_UNKNOWN
    assert client.command(b"APOP mark 0123456789abcdef") == ERR_UNKNOWN  # not offered
    assert client.command(b"") == ERR_UNKNOWN
    assert client.command(b"pop3_stat") == ERR_UNKNOWN
    garbage = bytes(range(256)).replace(b"\n", b"")
    assert client.command(garbage[:200]).startswith(b"-ERR")
    assert client.command(b"\xff\xfe\x00\x01 \x80").startswith(b"-ERR")
    assert client.command(b"\x00too-long").startswith(b"-ERR")
    # The session goes on.
    assert client.command(b"USER mark") == b"+OK send PASS\r\n"
    assert client.command(b"PASS demo-mark").startswith(b"+OK")
    assert client.command(b"\x1b[2J\x07") == ERR_UNKNOWN
    assert client.command(b"NOOP") == b"+OK\r\n"


def test_command_line_limit(connect: Callable[[], Raw]) -> None:
    client = logged_in(connect)
    # RFC 2449 §4: 255 octets, CRLF included, is the most a server must accept.
    longest = b"NOOP " + b"x" * (255 - len(b"NOOP \r\n"))
    assert len(longest + b"\r\n") == 255
    assert client.command(longest) == b"+OK\r\n"
    # A 300-octet line in one write.
    line = b"NOOP " + b"x" * (300 - len(b"NOOP \r\n"))
    assert client.command(line) == ERR_TOO_LONG
    assert client.command(b"NOOP") == b"+OK\r\n"
    # The same, arriving in pieces.
    client.send(line[:150])
    time.sleep(0.05)
    client.send(line[150:])
    time.sleep(0.05)
    assert client.command(b"") == ERR_TOO_LONG
    assert client.command(b"NOOP") == b"+OK\r\n"
    # A huge line without an end for a long while; only one reply for it.
    client.send(b"A" * 100_000)
    client.send(b"\r\nSTAT\r\n")
    assert client.line() == ERR_TOO_LONG
    assert client.line().startswith(b"+OK 2 ")


def test_over_long_user_name_is_refused(connect: Callable[[], Raw]) -> None:
    client = connect()
    assert client.command(b"USER " + b"m" * 300) == ERR_TOO_LONG
    assert client.command(b"PASS demo-mark") == b"-ERR USER first\r\n"


def test_pipelined_commands_are_answered_in_order(connect: Callable[[], Raw]) -> None:
    client = connect()
    client.send(
        b"CAPA\r\nUSER mark\r\nPASS demo-mark\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 1\r\n"
        b"DELE 1\r\nRETR 1\r\nXYZZY\r\nTOP 2 0\r\nRSET\r\nNOOP\r\nQUIT\r\n"
    )
    assert client.multiline().startswith(b"+OK Capability list follows\r\nTOP\r\n")
    assert client.line() == b"+OK send PASS\r\n"
    assert client.line().startswith(b"+OK maildrop has 2 messages")
    assert client.line() == b"+OK 2 %d\r\n" % (len(DOTS) + len(PLAIN_CRLF))
    assert client.multiline() == b"+OK 2 messages\r\n1 %d\r\n2 %d\r\n.\r\n" % (
        len(DOTS),
        len(PLAIN_CRLF),
    )
    assert client.line() == b"+OK 2 %s\r\n" % message_uid("<plain@dcnw.com>").encode()
    assert client.multiline() == b"+OK %d octets\r\n" % len(DOTS) + DOTS_WIRE
    assert client.line() == b"+OK message 1 deleted\r\n"
    assert client.line() == b"-ERR no such message\r\n"
    assert client.line() == ERR_UNKNOWN
    assert client.multiline() == (
        b"+OK top of message follows\r\nFrom: pat@dcnw.com\r\nSubject: LF only\r\n\r\n.\r\n"
    )
    assert client.line() == b"+OK maildrop has 2 messages\r\n"
    assert client.line() == b"+OK\r\n"
    assert client.line().startswith(b"+OK mailwright POP3 server signing off")
    assert client.sock.recv(10) == b""


def test_quit_in_authorization_closes(connect: Callable[[], Raw], store: MailStore) -> None:
    client = connect()
    assert client.command(b"QUIT") == b"+OK mailwright POP3 server signing off\r\n"
    assert client.sock.recv(10) == b""


def test_disconnect_mid_retr_of_a_large_message(
    store: MailStore,
    connect: Callable[[], Raw],
    session_tasks: Callable[[], int],
) -> None:
    large = LARGE * LARGE_COUNT
    store.deliver("mark", "<large@dcnw.com>", large)
    client = logged_in(connect)
    client.send(b"RETR 3\r\n")
    assert client.line() == b"+OK %d octets\r\n" % len(large)
    client.sock.recv(1000)
    # Reset the connection while the server still has megabytes to write.
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    # The session ends (its task does not wait for a drain that never comes) ...
    deadline = time.monotonic() + 5
    while session_tasks() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert session_tasks() == 0
    # ... the lock is released, nothing was deleted, and the message is intact.
    again = logged_in(connect)
    again.send(b"RETR 3\r\n")
    assert again.multiline() == b"+OK %d octets\r\n" % len(large) + large + b".\r\n"
    assert len(store.mailbox("mark").messages()) == 3


def test_disconnect_during_login_releases_the_maildrop(
    connect: Callable[[], Raw], session_tasks: Callable[[], int]
) -> None:
    # The client gives up while the password is being checked.
    client = connect()
    client.send(b"USER mark\r\nPASS demo-mark\r\n")
    client.close()
    deadline = time.monotonic() + 5
    while session_tasks() and time.monotonic() < deadline:
        time.sleep(0.02)
    again = logged_in(connect)
    assert again.command(b"QUIT").startswith(b"+OK")


def test_stls_discards_what_was_sent_before_the_handshake(
    connect: Callable[[], Raw], client_tls: ssl.SSLContext
) -> None:
    client = connect()
    # The STARTTLS command injection: a command sent in the clear with STLS, in one packet.
    client.send(b"USER mark\r\nSTLS\r\nCAPA\r\n")
    assert client.line() == b"+OK send PASS\r\n"
    assert client.line() == b"+OK Begin TLS negotiation\r\n"
    secure = start_tls(client, client_tls)
    # The injected CAPA is not answered, and the USER given in the clear is forgotten.
    assert secure.silent(0.3)
    assert secure.command(b"PASS demo-mark") == b"-ERR USER first\r\n"
    secure.send(b"CAPA\r\n")
    capabilities = secure.multiline()
    assert b"SASL PLAIN\r\n" in capabilities
    assert b"STLS" not in capabilities
    assert secure.command(b"USER mark") == b"+OK send PASS\r\n"
    assert secure.command(b"PASS demo-mark").startswith(b"+OK maildrop has 2 messages")
    secure.send(b"RETR 1\r\n")
    assert secure.multiline() == b"+OK %d octets\r\n" % len(DOTS) + DOTS_WIRE
    assert secure.command(b"QUIT").startswith(b"+OK")


def test_command_in_the_handshakes_last_flight_is_answered(
    connect: Callable[[], Raw], client_tls: ssl.SSLContext
) -> None:
    """A TLS 1.3 client may send its first command together with its Finished message: that
    command came after the handshake and must be answered."""
    client = connect()
    assert client.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_tls.wrap_bio(incoming, outgoing)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            client.send(outgoing.read())
            incoming.write(client.sock.recv(65536))
    assert tls.version() == "TLSv1.3"
    tls.write(b"CAPA\r\n")
    client.send(outgoing.read())  # Finished and CAPA in one write
    answer = b""
    client.sock.settimeout(3)
    while not answer.endswith(b"\r\n.\r\n"):
        try:
            answer += tls.read(65536)
        except ssl.SSLWantReadError:
            incoming.write(client.sock.recv(65536))
    assert answer.startswith(b"+OK Capability list follows\r\n")
    assert b"STLS" not in answer


def test_stls_pipelined_after_login_is_refused_and_the_session_goes_on(
    connect: Callable[[], Raw],
) -> None:
    client = connect()
    client.send(b"USER mark\r\nPASS demo-mark\r\nSTLS\r\nSTAT\r\nNOOP\r\n")
    assert client.line() == b"+OK send PASS\r\n"
    assert client.line().startswith(b"+OK maildrop has 2 messages")
    assert client.line() == ERR_STATE
    assert client.line().startswith(b"+OK 2 ")
    assert client.line() == b"+OK\r\n"
    assert client.command(b"QUIT").startswith(b"+OK")


def test_a_failed_handshake_does_not_hurt_the_server(connect: Callable[[], Raw]) -> None:
    client = connect()
    assert client.command(b"STLS") == b"+OK Begin TLS negotiation\r\n"
    client.send(b"this is not a TLS client hello\r\n" * 10)
    with pytest.raises(ConnectionError):
        client.line()
    again = logged_in(connect)
    assert again.command(b"NOOP") == b"+OK\r\n"


def test_many_clients_at_once(connect: Callable[[], Raw]) -> None:
    clients = [connect() for _ in range(30)]
    for client in clients:
        client.send(b"CAPA\r\n")
    for client in clients:
        assert client.multiline().endswith(b"STLS\r\n.\r\n")


def test_server_loop_is_idle_after_clients_leave(
    connect: Callable[[], Raw], session_tasks: Callable[[], int]
) -> None:
    for _ in range(5):
        logged_in(connect).command(b"QUIT")
    deadline = time.monotonic() + 5
    while session_tasks() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert session_tasks() == 0


# Messages at the edges of the line-end rules, and how each goes on the wire (RFC 1939 §3:
# every line ends in CRLF, the message ends with a line end before the "." line).
EDGES = [
    (
        b"Subject: no final line end\r\n\r\nlast line",
        b"Subject: no final line end\r\n\r\nlast line\r\n",
    ),
    (b"Subject: LF\n\nbody\n", b"Subject: LF\r\n\r\nbody\r\n"),
    (b"Subject: mixed\r\n\nbody\n.\r\n", b"Subject: mixed\r\n\r\nbody\r\n..\r\n"),
    (b"Subject: bare CR\r\n\r\na\rb\r\n", b"Subject: bare CR\r\n\r\na\rb\r\n"),
    (b"Subject: CR CR LF\r\n\r\nx\r\r\n", b"Subject: CR CR LF\r\n\r\nx\r\r\n"),
    (b"Subject: dot at the end\r\n\r\n.", b"Subject: dot at the end\r\n\r\n..\r\n"),
    (b"", b""),
]


@pytest.mark.parametrize(("data", "on_the_wire"), EDGES)
def test_sizes_match_the_bytes_sent(
    data: bytes, on_the_wire: bytes, store: MailStore, connect: Callable[[], Raw]
) -> None:
    store.deliver("mark", "<edge>", data)
    client = logged_in(connect)
    unstuffed = on_the_wire.replace(b"\r\n..", b"\r\n.")
    if unstuffed.startswith(b".."):
        unstuffed = unstuffed[1:]
    assert client.command(b"LIST 3") == b"+OK 3 %d\r\n" % len(unstuffed)
    client.send(b"RETR 3\r\n")
    assert client.multiline() == b"+OK %d octets\r\n" % len(unstuffed) + on_the_wire + b".\r\n"
