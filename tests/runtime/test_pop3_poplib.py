"""The POP3 server against Python's poplib: RFC 1939 commands, CAPA, SASL PLAIN, STLS, policy."""

from __future__ import annotations

import base64
import poplib
import socket
import ssl
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from mailwright.runtime.auth.accounts import Account, Accounts
from mailwright.runtime.store.mailstore import MailStore, message_uid
from mailwright.runtime.store.pop3 import Pop3Server

VERSION = version("mailwright")
GREETING = f"+OK mailwright POP3 server version {VERSION} ready.".encode()
ERR_AUTH = b"-ERR [AUTH] invalid user name or password"
CAPABILITIES = {
    "TOP": [],
    "USER": [],
    "UIDL": [],
    "PIPELINING": [],
    "RESP-CODES": [],
    "AUTH-RESP-CODE": [],
    "SASL": ["PLAIN"],
    "IMPLEMENTATION": [f"mailwright-{VERSION}"],
}

SIMPLE = (
    b"From: jane@dcnw.com\r\n"
    b"To: mark@minasi.com\r\n"
    b"Subject: Lunch\r\n"
    b"\r\n"
    b"Athena hands this to Hermes.\r\n"
)
DOTS = b"From: jane@dcnw.com\r\nSubject: dots\r\n\r\n.\r\n..twice\r\n.leading\r\nend.\r\n"
LONG = b"From: pat@dcnw.com\r\nSubject: long\r\n\r\n" + b"".join(
    f"line {n}\r\n".encode() for n in range(1, 21)
)
MESSAGES = [("<simple@dcnw.com>", SIMPLE), ("<dots@dcnw.com>", DOTS), ("<long@dcnw.com>", LONG)]
Connect = Callable[[int], poplib.POP3]


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    store = MailStore(tmp_path / "store")
    for message_id, data in MESSAGES:
        store.deliver("mark", message_id, data)
    return store


@pytest.fixture
def port(store: MailStore, serve_pop3: Callable[[MailStore, bool], int]) -> int:
    return serve_pop3(store, False)


@pytest.fixture
def tls_port(store: MailStore, serve_pop3: Callable[[MailStore, bool], int]) -> int:
    return serve_pop3(store, True)


def login(connect: Connect, port: int, user: str = "mark") -> poplib.POP3:
    client = connect(port)
    client.user(user)
    client.pass_(f"demo-{user.partition('@')[0]}")
    return client


def error_of(call: Callable[[], object]) -> bytes:
    with pytest.raises(poplib.error_proto) as caught:
        call()
    reply = caught.value.args[0]
    assert isinstance(reply, bytes)
    return reply


def shortcmd(client: poplib.POP3, line: str) -> bytes:
    """A command poplib has no method for (AUTH, STLS refused); its one-line reply."""
    client.sock.sendall(line.encode() + b"\r\n")
    reply = client.file.readline().rstrip(b"\r\n")
    if not reply.startswith(b"+"):
        raise poplib.error_proto(reply)
    return reply


def longcmd(client: poplib.POP3, line: str) -> list[bytes]:
    """A multi-line command's body lines (no dot-stuffing expected)."""
    shortcmd(client, line)
    lines = []
    while (body := client.file.readline().rstrip(b"\r\n")) != b".":
        lines.append(body)
    return lines


def wire(data: bytes) -> list[bytes]:
    """poplib's lines of a message: CRLF removed, dot-stuffing undone."""
    return data.split(b"\r\n")[:-1]


def test_greeting(port: int, connect: Connect) -> None:
    assert connect(port).getwelcome() == GREETING


def test_capa_without_tls(port: int, connect: Connect) -> None:
    client = connect(port)
    assert client.capa() == CAPABILITIES
    client.user("mark")
    client.pass_("demo-mark")
    assert client.capa() == CAPABILITIES


def test_capa_offers_stls_only_before_tls(
    tls_port: int, connect: Connect, client_tls: ssl.SSLContext
) -> None:
    client = connect(tls_port)
    assert client.capa() == {**CAPABILITIES, "STLS": []}
    client.stls(client_tls)
    # RFC 2595 §4: the capabilities are asked again and STLS is no longer among them.
    assert client.capa() == CAPABILITIES
    assert error_of(lambda: shortcmd(client, "STLS")).startswith(b"-ERR")


def test_stls_then_login_and_retrieve(
    tls_port: int, connect: Connect, client_tls: ssl.SSLContext
) -> None:
    client = connect(tls_port)
    assert client.stls(client_tls).startswith(b"+OK")
    assert isinstance(client.sock, ssl.SSLSocket)
    client.user("mark")
    assert client.pass_("demo-mark").startswith(b"+OK")
    _, lines, octets = client.retr(2)
    assert lines == wire(DOTS)
    assert octets == len(DOTS)
    client.quit()


def test_stls_is_refused_without_tls(port: int, connect: Connect) -> None:
    client = connect(port)
    assert error_of(lambda: shortcmd(client, "STLS")) == b"-ERR STLS not available"
    client.user("mark")
    assert client.pass_("demo-mark").startswith(b"+OK")


def test_login_with_the_seed_hashes_by_alias_and_by_address(
    store: MailStore,
    seed_accounts: dict[str, Account],
    serve: Callable[[Pop3Server], int],
    connect: Connect,
) -> None:
    port = serve(Pop3Server(Accounts(seed_accounts), store))
    for user in ("mark", "mark@minasi.com", "MARK@Minasi.COM"):
        client = connect(port)
        client.user(user)
        assert client.pass_("demo-mark") == b"+OK maildrop has 3 messages (%d octets)" % sum(
            len(data) for _, data in MESSAGES
        )
        client.quit()


def test_pop3_disabled_mailbox_is_refused_with_the_reason(port: int, connect: Connect) -> None:
    client = connect(port)
    client.user("paula")
    reply = error_of(lambda: client.pass_("demo-paula"))
    assert reply.startswith(b"-ERR [AUTH] ")
    assert b"POP3 is disabled" in reply
    # A wrong password does not reveal that the mailbox exists or is disabled.
    client.user("paula")
    assert error_of(lambda: client.pass_("wrong")) == ERR_AUTH


def test_unknown_user_and_wrong_password_get_the_same_answer(port: int, connect: Connect) -> None:
    client = connect(port)
    client.user("nobody")
    unknown = error_of(lambda: client.pass_("demo-mark"))
    client.user("mark")
    wrong = error_of(lambda: client.pass_("demo-nobody"))
    assert unknown == wrong == ERR_AUTH
    # Still in AUTHORIZATION: the right password works now.
    client.user("mark")
    assert client.pass_("demo-mark").startswith(b"+OK")


def test_stat_list_uidl_retr_top_exact(port: int, connect: Connect) -> None:
    client = login(connect, port)
    sizes = [len(data) for _, data in MESSAGES]
    assert client.stat() == (3, sum(sizes))
    assert client.list() == (
        b"+OK 3 messages",
        [b"%d %d" % (n, size) for n, size in enumerate(sizes, 1)],
        sum(len(b"%d %d\r\n" % (n, size)) for n, size in enumerate(sizes, 1)),
    )
    scan: object = client.list(2)  # typeshed says a multi-line answer; it is one line
    assert scan == b"+OK 2 %d" % sizes[1]
    uids = [message_uid(message_id).encode() for message_id, _ in MESSAGES]
    _, listing, _ = client.uidl()
    assert listing == [b"%d %s" % (n, uid) for n, uid in enumerate(uids, 1)]
    assert client.uidl(3) == b"+OK 3 " + uids[2]
    for n, (_, data) in enumerate(MESSAGES, 1):
        reply, lines, octets = client.retr(n)
        assert reply == b"+OK %d octets" % len(data)
        assert lines == wire(data)
        assert octets == len(data)  # RFC 1939: the size counts CRLF line ends
    _, top0, _ = client.top(3, 0)
    assert top0 == [b"From: pat@dcnw.com", b"Subject: long", b""]
    _, top2, _ = client.top(3, 2)
    assert top2 == [b"From: pat@dcnw.com", b"Subject: long", b"", b"line 1", b"line 2"]
    _, top_all, _ = client.top(3, 100)
    assert top_all == wire(LONG)
    assert error_of(lambda: client.top(4, 0)) == b"-ERR no such message"
    assert error_of(lambda: client.list(0)) == b"-ERR no such message"
    assert error_of(lambda: client.retr(4)) == b"-ERR no such message"
    assert client.noop() == b"+OK"
    assert client.quit().startswith(b"+OK mailwright POP3 server signing off")


def test_dele_and_rset_and_deletion_at_quit(port: int, connect: Connect, store: MailStore) -> None:
    client = login(connect, port)
    assert client.dele(1) == b"+OK message 1 deleted"
    assert error_of(lambda: client.dele(1)) == b"-ERR no such message"
    assert error_of(lambda: client.retr(1)) == b"-ERR no such message"
    assert error_of(lambda: client.list(1)) == b"-ERR no such message"
    assert error_of(lambda: client.uidl(1)) == b"-ERR no such message"
    assert client.stat() == (2, len(DOTS) + len(LONG))
    assert client.list()[1] == [b"2 %d" % len(DOTS), b"3 %d" % len(LONG)]
    # Nothing is gone until QUIT.
    assert len(store.mailbox("mark").messages()) == 3
    assert client.rset().startswith(b"+OK")
    assert client.stat() == (3, len(SIMPLE) + len(DOTS) + len(LONG))
    client.dele(1)
    client.dele(3)
    assert client.quit() == b"+OK mailwright POP3 server signing off (1 messages left)"
    left = store.mailbox("mark").messages()
    assert [m.uid for m in left] == [message_uid("<dots@dcnw.com>")]
    client = login(connect, port)
    assert client.stat() == (1, len(DOTS))
    assert client.uidl(1) == b"+OK 1 " + message_uid("<dots@dcnw.com>").encode()
    assert client.retr(1)[1] == wire(DOTS)
    client.quit()


def test_a_dropped_connection_deletes_nothing(
    port: int, connect: Connect, store: MailStore
) -> None:
    client = login(connect, port)
    client.dele(1)
    client.dele(2)
    client.close()  # no QUIT
    # The lock goes with the connection; the next session sees every message.
    deadline = time.monotonic() + 5
    while True:
        try:
            again = login(connect, port)
            break
        except poplib.error_proto as refused:
            assert b"[IN-USE]" in refused.args[0]
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert again.stat()[0] == 3
    assert len(store.mailbox("mark").messages()) == 3
    again.quit()


def test_a_second_session_gets_in_use(port: int, connect: Connect) -> None:
    first = login(connect, port)
    second = connect(port)
    second.user("mark@minasi.com")
    reply = error_of(lambda: second.pass_("demo-mark"))
    assert reply.startswith(b"-ERR [IN-USE] ")
    first.quit()
    second.user("mark")
    assert second.pass_("demo-mark").startswith(b"+OK")
    second.quit()


def test_uidls_persist_across_sessions_and_a_restart(  # noqa: PLR0917 (fixtures)
    tmp_path: Path,
    store: MailStore,
    fast_accounts: dict[str, Account],
    serve: Callable[[Pop3Server], int],
    stop_server: Callable[[int], None],
    connect: Connect,
) -> None:
    port = serve(Pop3Server(Accounts(fast_accounts), store))
    client = login(connect, port)
    before = client.uidl()[1]
    client.quit()
    client = login(connect, port)
    assert client.uidl()[1] == before
    client.dele(1)
    client.quit()
    stop_server(port)
    store.deliver("mark", "<after@dcnw.com>", SIMPLE)
    # A new process: new store and server objects on the same state directory.
    port = serve(Pop3Server(Accounts(fast_accounts), MailStore(tmp_path / "store")))
    client = login(connect, port)
    after = client.uidl()[1]
    assert [line.split()[1] for line in after] == [
        *(line.split()[1] for line in before[1:]),
        message_uid("<after@dcnw.com>").encode(),
    ]
    client.quit()


def test_auth_plain_with_initial_response(port: int, connect: Connect) -> None:
    client = connect(port)
    token = base64.b64encode(b"\x00mark\x00demo-mark").decode()
    assert shortcmd(client, f"AUTH PLAIN {token}").startswith(b"+OK maildrop has 3 messages")
    assert client.stat()[0] == 3
    client.quit()


def test_auth_plain_without_initial_response(port: int, connect: Connect) -> None:
    client = connect(port)
    assert shortcmd(client, "AUTH PLAIN") == b"+ "
    token = base64.b64encode(b"mark@minasi.com\x00mark@minasi.com\x00demo-mark").decode()
    assert shortcmd(client, token).startswith(b"+OK maildrop has 3 messages")
    client.quit()


def test_auth_plain_cancel_and_failures(port: int, connect: Connect) -> None:
    client = connect(port)
    assert shortcmd(client, "AUTH PLAIN") == b"+ "
    assert error_of(lambda: shortcmd(client, "*")) == b"-ERR authentication cancelled"
    bad = base64.b64encode(b"\x00mark\x00wrong").decode()
    assert error_of(lambda: shortcmd(client, f"AUTH PLAIN {bad}")) == ERR_AUTH
    # Acting as another user (an authzid that is not the authcid) is not allowed.
    other = base64.b64encode(b"paula\x00mark\x00demo-mark").decode()
    assert error_of(lambda: shortcmd(client, f"AUTH PLAIN {other}")) == ERR_AUTH
    assert error_of(lambda: shortcmd(client, "AUTH PLAIN !!!")).startswith(b"-ERR invalid")
    assert error_of(lambda: shortcmd(client, "AUTH CRAM-MD5")) == (
        b"-ERR unsupported SASL mechanism"
    )
    # The session is still in AUTHORIZATION and USER/PASS work.
    client.user("mark")
    assert client.pass_("demo-mark").startswith(b"+OK")
    client.quit()


def test_auth_without_mechanism_lists_plain(port: int, connect: Connect) -> None:
    client = connect(port)
    mechanisms = longcmd(client, "AUTH")
    assert mechanisms == [b"PLAIN"]


def _other_client(port: int, password: str) -> tuple[bytes, float]:
    """Log in from 127.0.0.2, another address than the failing client's; (reply, seconds)."""
    with socket.create_connection(("127.0.0.1", port), 10, ("127.0.0.2", 0)) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        started = time.monotonic()
        sock.sendall(f"USER mark\r\nPASS {password}\r\n".encode())
        assert reader.readline().startswith(b"+OK")
        reply = reader.readline().rstrip(b"\r\n")
        elapsed = time.monotonic() - started
        sock.sendall(b"QUIT\r\n")
        reader.readline()
        reader.close()
        return reply, elapsed


def test_repeated_failures_are_slowed_down_without_blocking_others(
    store: MailStore,
    fast_accounts: dict[str, Account],
    serve: Callable[[Pop3Server], int],
    connect: Connect,
) -> None:
    accounts = Accounts(fast_accounts, free_failures=2, delay_base=0.6)
    port = serve(Pop3Server(accounts, store))
    client = connect(port)

    def fail() -> float:
        started = time.monotonic()
        client.user("mark")
        assert error_of(lambda: client.pass_("wrong")) == ERR_AUTH
        return time.monotonic() - started

    free = [fail() for _ in range(accounts.free_failures)]
    assert max(free) < 0.5
    first_delayed = fail()  # base delay
    assert first_delayed >= 0.6
    # The next failure waits longer (the delay grows); meanwhile another address is served.
    client.user("mark")
    started = time.monotonic()
    client.sock.sendall(b"PASS wrong\r\n")
    reply, other_elapsed = _other_client(port, "wrong")
    assert reply == ERR_AUTH
    assert other_elapsed < 0.5
    reply, other_elapsed = _other_client(port, "demo-mark")
    assert reply.startswith(b"+OK maildrop has 3 messages")
    assert other_elapsed < 0.5
    assert client.file.readline() == ERR_AUTH + b"\r\n"
    assert time.monotonic() - started >= 1.2
    assert time.monotonic() - started > first_delayed


def test_idle_session_is_logged_out(
    store: MailStore,
    fast_accounts: dict[str, Account],
    serve: Callable[[Pop3Server], int],
    connect: Connect,
) -> None:
    port = serve(Pop3Server(Accounts(fast_accounts), store, idle_timeout=0.3))
    client = connect(port)
    started = time.monotonic()
    # RFC 1939 §3: the autologout closes the connection without a response.
    assert client.sock.recv(100) == b""
    assert 0.2 < time.monotonic() - started < 5
