"""POP3 retrieval throughput: mailwright's server, and Dovecot's on the same Maildirs.

C concurrent sessions (default 20) each log in, STAT, pipeline RETR of every message of their
mailbox (RFC 2449 PIPELINING: all RETR commands in one write), and QUIT. Each mailbox holds M
messages (default 200) of about 2 KiB, delivered through the store's delivery API
(`MailStore.deliver`: tmp/, fsync, rename into new/). The driver is one asyncio client on raw
sockets, the same for both servers; it checks every answer (status, terminating line, that the
octets received add up to STAT's total) and prints messages/s and MiB/s (message octets as
POP3 counts them).

mailwright's server runs in a child process of its own (this script with --serve), on the
plain asyncio event loop, as the host process runs it. When Dovecot is installed
(`dovecot-pop3d`), a private Dovecot instance (generated minimal config in a temporary
directory, `dovecot -F -c CONF`, stopped by its pid) serves a copy of the same Maildirs and the
same driver measures it; the ratio is mailwright / Dovecot. The issue's target is a ratio of at
least 0.8 at 20 sessions x 200 messages of 2 KiB.

Passwords: Dovecot checks `{PLAIN}` passwords from a passwd-file; mailwright only stores hashes,
so its benchmark users get argon2id hashes with minimal cost parameters (a few milliseconds). The
seed's production parameters (m=64 MiB, t=3) cost about 0.4 s of CPU per login, which with 20
logins on a small machine would measure password hashing, not POP3; `--real-hash` measures that.
The login and retrieval phases are also timed apart.

Each server gets one warm-up round (Dovecot builds its index files, the page cache fills), then
`--rounds` measured rounds; the median round is reported. RETR does not delete, so every round
retrieves the same mail. `--profile FILE` runs mailwright's server under cProfile and prints its
hotspots.

Run: .venv/bin/python benchmarks/pop3_bench.py [--sessions 20] [--messages 200] [--size 2048]
     [--rounds 5] [--no-dovecot] [--real-hash] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import pwd
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import argon2

from mailwright.runtime.auth.accounts import Account, Accounts
from mailwright.runtime.store.mailstore import MailStore
from mailwright.runtime.store.pop3 import Pop3Server

TARGET_RATIO = 0.8
HOST = "127.0.0.1"
DOMAIN = "bench.example"
READY_TIMEOUT = 30.0
VOCABULARY = (
    "mail store server message route gateway site organization address mailbox delivery "
    "transfer queue retry report internet exchange connector directory replica"
)
WORDS = VOCABULARY.split()


def alias(n: int) -> str:
    return f"user{n:03d}"


def password(name: str) -> str:
    return f"bench-{name}"


# --- the mail -------------------------------------------------------------------------------


def message(rng: random.Random, user: str, n: int, size: int) -> bytes:
    """An RFC 5322 message of about `size` octets (CRLF line ends), some lines dot-stuffed."""
    header = (
        f"Return-Path: <sender{n % 7}@{DOMAIN}>\r\n"
        f"Received: from hermes.{DOMAIN} by arlington.{DOMAIN}; Thu, 1 Jan 2026 12:00:00 +0000\r\n"
        f"From: Sender {n % 7} <sender{n % 7}@{DOMAIN}>\r\n"
        f"To: {user}@{DOMAIN}\r\n"
        f"Subject: benchmark message {n}\r\n"
        f"Date: Thu, 1 Jan 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{user}.{n}@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
    ).encode()
    lines = []
    length = len(header)
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(10))[:72]
        if rng.random() < 0.05:
            line = "." + line  # goes on the wire as ".." (RFC 1939 §3)
        lines.append(line.encode() + b"\r\n")
        length += len(lines[-1])
    return header + b"".join(lines)


def populate(store_root: Path, sessions: int, messages: int, size: int) -> tuple[int, float]:
    """Deliver the mail through the store API; (octets, seconds)."""
    rng = random.Random(1939)
    store = MailStore(store_root)
    total = 0
    started = time.perf_counter()
    for u in range(sessions):
        name = alias(u)
        for n in range(messages):
            data = message(rng, name, n, size)
            store.deliver(name, f"<{name}.{n}@{DOMAIN}>", data)
            total += len(data)
    return total, time.perf_counter() - started


# --- the driver -----------------------------------------------------------------------------


@dataclass
class SessionResult:
    messages: int
    octets: int  # message octets as POP3 counts them (STAT), checked against what arrived
    wire: int  # everything read from the socket
    login: float
    retrieval: float


class ProtocolError(Exception):
    pass


async def _line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readuntil(b"\r\n")
    if not line.startswith(b"+OK"):
        raise ProtocolError(line.decode(errors="replace").strip())
    return line


async def session(port: int, user: str, expected: int) -> SessionResult:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
    try:
        wire = len(await _line(reader))
        writer.write(f"USER {user}\r\nPASS {password(user)}\r\n".encode())
        wire += len(await _line(reader)) + len(await _line(reader))
        logged_in = time.perf_counter()
        writer.write(b"STAT\r\n")
        stat = await _line(reader)
        wire += len(stat)
        count, octets = map(int, stat.split()[1:3])
        if count != expected:
            raise ProtocolError(f"{user}: STAT says {count} messages, expected {expected}")
        # PIPELINING: every RETR in one write, the answers read in order.
        writer.write(b"".join(b"RETR %d\r\n" % n for n in range(1, count + 1)))
        received = 0
        for _ in range(count):
            answer = await reader.readuntil(b"\r\n.\r\n")
            if not answer.startswith(b"+OK"):
                raise ProtocolError(answer[:200].decode(errors="replace"))
            wire += len(answer)
            body = answer[answer.index(b"\r\n") + 2 : -3]
            received += len(body) - body.count(b"\r\n..") - body.startswith(b"..")
        writer.write(b"QUIT\r\n")
        wire += len(await _line(reader))
        if received != octets:
            raise ProtocolError(f"{user}: received {received} octets, STAT said {octets}")
        return SessionResult(
            count, octets, wire, logged_in - started, time.perf_counter() - logged_in
        )
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class Round:
    seconds: float
    messages: int
    octets: int
    wire: int
    login_mean: float
    login_max: float

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds

    @property
    def mib_per_second(self) -> float:
        return self.octets / self.seconds / (1 << 20)


async def one_round(port: int, sessions: int, messages: int) -> Round:
    started = time.perf_counter()
    results = await asyncio.gather(*(session(port, alias(u), messages) for u in range(sessions)))
    seconds = time.perf_counter() - started
    logins = [r.login for r in results]
    return Round(
        seconds,
        sum(r.messages for r in results),
        sum(r.octets for r in results),
        sum(r.wire for r in results),
        statistics.mean(logins),
        max(logins),
    )


def measure(name: str, port: int, args: argparse.Namespace) -> Round:
    asyncio.run(one_round(port, args.sessions, args.messages))  # warm-up
    rounds = [
        asyncio.run(one_round(port, args.sessions, args.messages)) for _ in range(args.rounds)
    ]
    for n, r in enumerate(rounds, 1):
        print(
            f"  {name} round {n}: {r.seconds:6.3f} s  {r.per_second:9.0f} msg/s  "
            f"{r.mib_per_second:7.2f} MiB/s  login mean {r.login_mean * 1000:6.1f} ms "
            f"max {r.login_max * 1000:6.1f} ms",
            flush=True,
        )
    return sorted(rounds, key=lambda r: r.seconds)[len(rounds) // 2]


# --- servers --------------------------------------------------------------------------------


def wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as probe:
            if probe.recv(100).startswith(b"+OK"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def mailwright_server(store: Path, args: argparse.Namespace) -> Iterator[int]:
    port = free_port()
    command = [sys.executable, __file__, "--serve", str(store), "--port", str(port)]
    command += ["--sessions", str(args.sessions)]
    if args.real_hash:
        command.append("--real-hash")
    if args.profile:
        command += ["--profile", str(args.profile)]
    process = subprocess.Popen(command)
    try:
        wait_until_listening(port, process)
        yield port
    finally:
        stop(process)


def serve(args: argparse.Namespace) -> None:
    """The child process: mailwright's POP3 server on the benchmark mailboxes."""
    if args.real_hash:
        hasher = argon2.PasswordHasher()  # the production parameters
    else:
        hasher = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    accounts = {}
    for u in range(args.sessions):
        name = alias(u)
        accounts[name] = Account(
            alias=name,
            address=f"{name}@{DOMAIN}",
            password_hash=hasher.hash(password(name)),
            enabled=True,
        )
    server = Pop3Server(Accounts(accounts), MailStore(args.serve))

    async def run() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
        listener = await server.start(HOST, args.port)
        await stopping.wait()
        listener.close()

    if args.profile is None:
        asyncio.run(run())
        return
    profiler = cProfile.Profile()
    profiler.runcall(asyncio.run, run())
    profiler.dump_stats(args.profile)


DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = pop3
listen = {host}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{mail}/%u/Maildir
first_valid_uid = {uid}
first_valid_gid = {gid}
default_internal_user = {internal_user}
default_login_user = {login_user}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


@contextlib.contextmanager
def dovecot_server(dovecot: str, store: Path, base: Path, sessions: int) -> Iterator[int]:
    """A private Dovecot serving a copy of the Maildirs, as the current user (or, as root, as
    Dovecot's own unprivileged users and `nobody` for the mail)."""
    base.mkdir(mode=0o755)
    mail = base / "mail"
    shutil.copytree(store, mail)
    if os.geteuid() == 0:
        owner = pwd.getpwnam("nobody")
        uid, gid = owner.pw_uid, owner.pw_gid
        internal_user, login_user = "dovecot", "dovenull"
        for folder, _, names in os.walk(mail):
            os.chown(folder, uid, gid)
            for name in names:
                os.chown(os.path.join(folder, name), uid, gid)
    else:
        uid, gid = os.getuid(), os.getgid()
        internal_user = login_user = pwd.getpwuid(uid).pw_name
    (base / "passwd").write_text(
        "".join(f"{alias(u)}:{{PLAIN}}{password(alias(u))}\n" for u in range(sessions))
    )
    port = free_port()
    conf = base / "dovecot.conf"
    conf.write_text(
        DOVECOT_CONF.format(
            base=base,
            mail=mail,
            host=HOST,
            port=port,
            uid=uid,
            gid=gid,
            internal_user=internal_user,
            login_user=login_user,
        )
    )
    process = subprocess.Popen([dovecot, "-F", "-c", str(conf)])
    try:
        wait_until_listening(port, process)
        yield port
    except RuntimeError:
        log = base / "dovecot.log"
        if log.exists():
            sys.stderr.write(log.read_text())
        raise
    finally:
        stop(process)


def print_profile(path: Path) -> None:
    print(f"\nmailwright server profile ({path}), top functions by own time:")
    stats = pstats.Stats(str(path))
    stats.sort_stats(pstats.SortKey.TIME).print_stats(25)
    print("top functions by cumulative time:")
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(25)


def summary(name: str, r: Round) -> str:
    return (
        f"{name:<11} {r.per_second:9.0f} msg/s  {r.mib_per_second:7.2f} MiB/s  "
        f"({r.messages} messages, {r.octets / (1 << 20):.1f} MiB in {r.seconds:.3f} s; "
        f"login mean {r.login_mean * 1000:.1f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions (C)")
    parser.add_argument("--messages", type=int, default=200, help="messages per mailbox (M)")
    parser.add_argument("--size", type=int, default=2048, help="approximate message size")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per server")
    parser.add_argument("--no-dovecot", action="store_true", help="measure mailwright only")
    parser.add_argument("--real-hash", action="store_true", help="production argon2id cost")
    parser.add_argument("--profile", type=Path, help="cProfile mailwright's server into FILE")
    parser.add_argument("--keep", type=Path, help="work in this new folder and keep it")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args)
        return 0

    with contextlib.ExitStack() as cleanup:
        if args.keep:
            args.keep.mkdir(parents=True)
            work = args.keep
        else:
            work = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="pop3-bench-")))
        work.chmod(0o755)  # Dovecot's unprivileged processes must reach their folder
        store = work / "store"
        octets, seconds = populate(store, args.sessions, args.messages, args.size)
        count = args.sessions * args.messages
        print(
            f"{args.sessions} sessions x {args.messages} messages, mean size "
            f"{octets / count:.0f} octets: delivered {count} messages through the store API "
            f"in {seconds:.2f} s ({count / seconds:.0f} msg/s, fsync each)",
            flush=True,
        )
        hashing = "argon2id production cost" if args.real_hash else "argon2id minimal cost"
        print(f"mailwright {Pop3Server.__module__} (asyncio, {hashing})", flush=True)
        with mailwright_server(store, args) as port:
            ours = measure("mailwright", port, args)
        dovecot = None if args.no_dovecot else shutil.which("dovecot")
        theirs = None
        if dovecot is not None:
            version = subprocess.run(
                [dovecot, "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
            print(f"dovecot {version} (passwd-file, {{PLAIN}})", flush=True)
            with dovecot_server(dovecot, store, work / "dovecot", args.sessions) as port:
                theirs = measure("dovecot", port, args)
        elif not args.no_dovecot:
            print("dovecot not installed: mailwright measured alone", flush=True)

    print()
    print(summary("mailwright", ours))
    if theirs is not None:
        print(summary("dovecot", theirs))
        ratio = ours.per_second / theirs.per_second
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        print(
            f"ratio       {ratio:.2f}x Dovecot's messages/s ({verdict} the {TARGET_RATIO}x target)"
        )
    if args.profile:
        print_profile(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
