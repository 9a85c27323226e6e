"""Real POP3 clients (curl, fetchmail, poplib) against real servers on loopback, and the host
process started as a user would start it."""

from __future__ import annotations

import os
import poplib
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailwright.runtime.store.mailstore import MailStore, message_uid, to_lf

SIMPLE = (
    b"From: jane@dcnw.com\r\n"
    b"To: mark@minasi.com\r\n"
    b"Subject: Lunch\r\n"
    b"\r\n"
    b"Athena hands this to Hermes.\r\n"
)
DOTS = b"From: jane@dcnw.com\r\nSubject: dots\r\n\r\n.\r\n..twice\r\n.leading\r\nend.\r\n"
LONG = b"From: pat@dcnw.com\r\nSubject: long\r\n\r\n" + b"".join(
    b"line %d, a little text to make it longer\r\n" % n for n in range(1, 400)
)
MESSAGES = [("<simple@dcnw.com>", SIMPLE), ("<dots@dcnw.com>", DOTS), ("<long@dcnw.com>", LONG)]
LATER = ("<later@dcnw.com>", b"From: pat@dcnw.com\r\nSubject: later\r\n\r\nOne more.\r\n")
CLIENT_TIMEOUT = 30


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    store = MailStore(tmp_path / "store")
    for message_id, data in MESSAGES:
        store.deliver("mark", message_id, data)
    return store


@pytest.fixture
def plain_port(store: MailStore, serve_pop3: Callable[[MailStore, bool], int]) -> int:
    """A server without TLS: no STLS offered."""
    return serve_pop3(store, False)


@pytest.fixture
def tls_port(store: MailStore, serve_pop3: Callable[[MailStore, bool], int]) -> int:
    return serve_pop3(store, True)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME, so no ~/.curlrc, ~/.fetchmailrc or ~/.fetchids of the user interferes."""
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def client_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**env, "HOME": str(home), "FETCHMAILHOME": str(home), "LC_ALL": "C"}


# --- curl -------------------------------------------------------------------------------------


@pytest.fixture
def curl(require_tool: Callable[[str], str], home: Path) -> Callable[..., bytes]:
    """Run curl against a POP3 URL; its standard output."""
    executable = require_tool("curl")

    def run(url: str, *options: str) -> bytes:
        done = subprocess.run(
            [executable, "-q", "-sS", "--noproxy", "*", "-u", "mark:demo-mark", *options, url],
            capture_output=True,
            env=client_env(home),
            timeout=CLIENT_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout

    return run


def test_curl_list(plain_port: int, curl: Callable[..., bytes]) -> None:
    expected = b"".join(b"%d %d\r\n" % (n, len(data)) for n, (_, data) in enumerate(MESSAGES, 1))
    assert curl(f"pop3://127.0.0.1:{plain_port}/") == expected


def test_curl_retr_exact_bytes(plain_port: int, curl: Callable[..., bytes]) -> None:
    for n, (_, data) in enumerate(MESSAGES, 1):
        assert curl(f"pop3://127.0.0.1:{plain_port}/{n}") == data


def test_curl_uidl_and_top(plain_port: int, curl: Callable[..., bytes]) -> None:
    url = f"pop3://127.0.0.1:{plain_port}/"
    assert curl(url, "-X", "UIDL") == b"".join(
        b"%d %s\r\n" % (n, message_uid(message_id).encode())
        for n, (message_id, _) in enumerate(MESSAGES, 1)
    )
    assert curl(url, "-X", "TOP 1 0") == SIMPLE.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert curl(url, "-X", "TOP 3 2") == b"From: pat@dcnw.com\r\nSubject: long\r\n\r\n" + (
        b"line 1, a little text to make it longer\r\nline 2, a little text to make it longer\r\n"
    )


def test_curl_stls(tls_port: int, curl: Callable[..., bytes]) -> None:
    assert curl(f"pop3://127.0.0.1:{tls_port}/2", "--ssl-reqd", "-k") == DOTS
    # SASL PLAIN with an initial response, over TLS.
    options = ["--ssl-reqd", "-k", "--login-options", "AUTH=PLAIN", "--sasl-ir"]
    assert curl(f"pop3://127.0.0.1:{tls_port}/3", *options) == LONG


def test_curl_ssl_reqd_fails_without_stls(
    plain_port: int, require_tool: Callable[[str], str], home: Path
) -> None:
    url = f"pop3://127.0.0.1:{plain_port}/1"
    done = subprocess.run(
        [require_tool("curl"), "-q", "-sS", "--ssl-reqd", "-u", "mark:demo-mark", url],
        capture_output=True,
        env=client_env(home),
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 64  # CURLE_USE_SSL_FAILED: the server offers no STLS
    assert done.stdout == b""


def test_curl_wrong_password(plain_port: int, require_tool: Callable[[str], str]) -> None:
    done = subprocess.run(
        [require_tool("curl"), "-q", "-sS", "-u", "mark:wrong", f"pop3://127.0.0.1:{plain_port}/"],
        capture_output=True,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )
    assert done.returncode == 67  # CURLE_LOGIN_DENIED
    assert done.stdout == b""


# --- fetchmail --------------------------------------------------------------------------------


class Fetched:
    def __init__(self, returncode: int, log: str, messages: list[bytes]) -> None:
        self.returncode = returncode
        self.log = log
        self.messages = messages


@pytest.fixture
def fetchmail(
    require_tool: Callable[[str], str], home: Path, tmp_path: Path
) -> Callable[..., Fetched]:
    """Run fetchmail for mark with an MDA that keeps each message in a file of its own."""
    executable = require_tool("fetchmail")
    rcfile = home / ".fetchmailrc"
    # The password can only come from an rcfile (or a terminal); the rest from options.
    rcfile.write_text('poll 127.0.0.1 user "mark" there with password "demo-mark"\n')
    rcfile.chmod(0o600)
    mda = tmp_path / "mda.sh"
    mda.write_text('#!/bin/sh\nn=$(ls "$1" | wc -l)\nexec cat > "$1/$(printf %03d "$n")"\n')
    mda.chmod(0o755)
    runs = iter(range(100))

    def run(port: int, *options: str) -> Fetched:
        out = tmp_path / f"fetched-{next(runs)}"
        out.mkdir()
        command = [executable, "-f", str(rcfile), "-v", "--nosyslog", "-p", "POP3", "-U"]
        command += ["--port", str(port), "--mda", f"{mda} {out}", *options, "127.0.0.1"]
        done = subprocess.run(
            command,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=client_env(home),
            timeout=CLIENT_TIMEOUT,
            check=False,
        )
        log = (done.stdout + done.stderr).decode(errors="replace")
        messages = [path.read_bytes() for path in sorted(out.iterdir())]
        return Fetched(done.returncode, log, messages)

    return run


def test_fetchmail_keep_then_only_new_mail_then_nokeep(
    plain_port: int, store: MailStore, fetchmail: Callable[..., Fetched]
) -> None:
    # fetchmail 6.4 asks for STLS even when CAPA does not offer it; --sslproto '' says no.
    plain = ("--sslproto", "", "--invisible")
    # --invisible: no Received header of fetchmail's own, so the bytes compare exactly (the
    # MDA gets the message with LF line ends, as the store keeps it).
    first = fetchmail(plain_port, "--keep", *plain)
    assert first.returncode == 0, first.log
    assert first.messages == [to_lf(data) for _, data in MESSAGES]
    assert len(store.mailbox("mark").messages()) == 3
    # UIDLs persist, so with -U only the new message is fetched the next time.
    store.deliver("mark", *LATER)
    second = fetchmail(plain_port, "--keep", *plain)
    assert second.returncode == 0, second.log
    assert second.messages == [to_lf(LATER[1])]
    nothing = fetchmail(plain_port, "--keep", *plain)
    assert nothing.returncode == 1, nothing.log  # fetchmail's "no mail"
    assert nothing.messages == []
    # --nokeep --all: everything, deleted from the server.
    last = fetchmail(plain_port, "--nokeep", "--all", *plain)
    assert last.returncode == 0, last.log
    assert last.messages == [to_lf(data) for _, data in [*MESSAGES, LATER]]
    assert "POP3> DELE 4" in last.log
    assert store.mailbox("mark").messages() == []


def test_fetchmail_stls(tls_port: int, store: MailStore, fetchmail: Callable[..., Fetched]) -> None:
    fetched = fetchmail(tls_port, "--sslproto", "tls1.2+", "--nosslcertck", "--nokeep")
    assert fetched.returncode == 0, fetched.log
    assert "POP3> STLS" in fetched.log
    assert "POP3< +OK Begin TLS negotiation" in fetched.log
    # Without --invisible fetchmail puts its Received header on top; the rest is as stored.
    assert len(fetched.messages) == 3
    for retrieved, (_, data) in zip(fetched.messages, MESSAGES, strict=True):
        assert retrieved.startswith(b"Received: from 127.0.0.1")
        assert retrieved.endswith(b"\n" + to_lf(data))
    assert store.mailbox("mark").messages() == []


def test_fetchmail_refused_login(plain_port: int, fetchmail: Callable[..., Fetched]) -> None:
    fetched = fetchmail(plain_port, "--username", "paula", "--sslproto", "")
    assert fetched.returncode == 3, fetched.log  # fetchmail's authentication failure
    assert "-ERR [AUTH] invalid user name or password" in fetched.log


# --- the host process --------------------------------------------------------------------------


class Host:
    """`python -m mailwright.runtime.host` on a state directory, stopped by its pid."""

    def __init__(self, config: Path, state: Path) -> None:
        command = [sys.executable, "-m", "mailwright.runtime.host", str(config)]
        command += ["--state", str(state), "--pop3-port", "0", "--transfer-port", "0"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stderr = ""
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        match = re.search(r"\bpop3=127\.0\.0\.1:(\d+)\b", ready)
        if match is None:
            self.stop()
            pytest.fail(f"host did not get ready: {ready!r} {self.stderr!r}")
        self.port = int(match[1])

    def stop(self) -> int:
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGTERM)
        _, self.stderr = self.process.communicate(timeout=30)
        return self.process.returncode


@pytest.fixture
def start_host(arlington_path: Path, tmp_path: Path) -> Iterator[Callable[[], Host]]:
    hosts: list[Host] = []

    def start() -> Host:
        hosts.append(Host(arlington_path, tmp_path / "state"))
        return hosts[-1]

    yield start
    for host in hosts:
        host.stop()


def test_host_process_serves_the_seed_mailboxes(
    start_host: Callable[[], Host],
    arlington: dict[str, Any],
    tmp_path: Path,
    client_tls: ssl.SSLContext,
) -> None:
    host = start_host()
    store = MailStore(tmp_path / "state" / "hosts" / arlington["server"]["name"] / "store")
    for message_id, data in MESSAGES:
        assert store.deliver("mark", message_id, data)
    client = poplib.POP3("127.0.0.1", host.port, timeout=10)
    try:
        assert client.getwelcome().startswith(b"+OK mailwright POP3 server version ")
        assert "STLS" in client.capa()
        client.stls(client_tls)
        client.user("mark@minasi.com")
        client.pass_("demo-mark")  # the seed's own argon2id hash
        assert client.stat() == (3, sum(len(data) for _, data in MESSAGES))
        assert client.retr(2)[1] == DOTS.split(b"\r\n")[:-1]
        uids = client.uidl()[1]
        client.dele(1)
        client.quit()
    finally:
        client.close()
    paula = poplib.POP3("127.0.0.1", host.port, timeout=10)
    try:
        paula.user("paula")
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] POP3 is disabled"):
            paula.pass_("demo-paula")
    finally:
        paula.close()
    assert host.stop() == 0, host.stderr
    # A restart on the same state: the deletion held, the UIDLs did not change, and a
    # redelivery of a message already taken (and deleted) is not taken again.
    assert not store.deliver("mark", *MESSAGES[0])
    host = start_host()
    client = poplib.POP3("127.0.0.1", host.port, timeout=10)
    try:
        client.user("mark")
        client.pass_("demo-mark")
        assert client.uidl()[1] == [
            b"%d %s" % (n, line.split()[1]) for n, line in enumerate(uids[1:], 1)
        ]
        client.quit()
    finally:
        client.close()
    assert host.stop() == 0, host.stderr


def test_host_process_with_curl(
    start_host: Callable[[], Host],
    arlington: dict[str, Any],
    tmp_path: Path,
    curl: Callable[..., bytes],
) -> None:
    host = start_host()
    store = MailStore(tmp_path / "state" / "hosts" / arlington["server"]["name"] / "store")
    store.deliver("mark", *MESSAGES[1])
    assert curl(f"pop3://127.0.0.1:{host.port}/1", "--ssl-reqd", "-k") == DOTS
    assert host.stop() == 0, host.stderr
