"""SMTP inbound throughput: mailwright's IMS, and a private Postfix relaying to smtp-sink.

Both are driven by Postfix's `smtp-source` with the same load (default: 20 sessions, 5,000
messages with a 2 KiB body, one message per connection, as smtp-source does without -d):

    smtp-source -s 20 -m 5000 -l 2048 -f from@x -t mark@minasi.com 127.0.0.1:PORT

mailwright: the seed's Minasi organization is applied to a state directory in a temporary folder
and Arlington (store, IMS and DNS, as `python -m mailwright.runtime.host` runs it: SMTP in its
IMS worker processes, one a CPU) takes the mail for mark, a mailbox of its own. Measured:

(a) durable accept: smtp-source's wall time. The IMS answers 250 only once the message is in
    the MTA's queue (its file flushed to disk, then named), so this is the rate of durably
    accepted mail.
(b) to the mailbox: from smtp-source's start until all messages are files in mark's Maildir
    (the MTA routed and delivered them, flushed, and took them off its queue).
Also printed: the CPU time (user and system, from /proc) the host and its IMS workers spent
from smtp-source's start until (b), per message; smtp-source's own is not counted.

Postfix: a private instance (its own main.cf and master.cf, queue and data directories in the
temporary folder, listening on a loopback port, `relayhost = [127.0.0.1]:SINKPORT`,
mail_owner=postfix), started with `postfix -c DIR start` and stopped with `postfix -c DIR stop`.
smtp-sink takes what it relays and exits after the last message (-M). Measured: smtp-source's
wall time (accept: smtpd + cleanup, queue file fsynced before 250) and the time until smtp-sink
has every message (accept and relay). The ratios are mailwright / Postfix: (a) against
Postfix's accept, (b) against Postfix's accept-and-relay. Targets: (a) >= 1.2, (b) >= 1.0.

Each side first gets a warm-up of `--warmup` messages (Postfix forks its smtpd processes,
mailwright's host fills its caches); only the measured run counts. A private Postfix needs
root (its master runs as root and drops to mail_owner); without root only mailwright runs.

Rounds: the two sides take turns `--rounds` times (Postfix first every other round) and the
medians are compared; one run of either moves by a fifth from one time to the next. Nothing is
deleted until the end, and a run is best made on a file system nothing deleted many files on
in the last minutes: on ext4 without a journal, every file created next to recently deleted
inodes searches past them (find_inode_bit, recently_deleted), which slows whichever side
creates files after a big deletion (measured: twice the system time in mailwright's host).

Run: benchmarks/smtp_bench.sh [--sessions 20] [--messages 5000] [--size 2048] [--warmup 200]
     [--rounds 3] [--profile FILE] [--keep]
`--profile FILE` runs Arlington's host under cProfile in the first round (the event loop's
thread; the work the MTA and queue hand to executor threads shows only as waiting) and prints
its hotspots.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailwright.runtime.bundle import applied_bundle

ROOT = Path(__file__).resolve().parents[1]
MINASI = ROOT / "examples" / "seed" / "minasi.yaml"
MAILWRIGHT = Path(sys.executable).with_name("mailwright")
HOST = "127.0.0.1"
RECIPIENT = "mark@minasi.com"
SENDER = "from@x"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {folder}/queue
data_directory = {folder}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.bench.invalid
mydomain = bench.invalid
myorigin = $myhostname
mydestination =
relayhost = [127.0.0.1]:{sink_port}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file_prefixes = {folder}
maillog_file = {folder}/postfix.log
"""
# Debian's master.cf, every service out of chroot (the queue folder has no /etc of its own),
# smtpd on a loopback port.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
local      unix  - n n -     - local
virtual    unix  - n n -     - virtual
lmtp       unix  - - n -     - lmtp
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Load:
    sessions: int
    messages: int
    size: int


@dataclass(frozen=True)
class Result:
    accept: float  # seconds until smtp-source was done
    through: float  # seconds until every message was where it goes
    cpu: float = 0.0  # mailwright: CPU seconds of the host and its IMS workers meanwhile


_TIMES = ("accept", "through")


@dataclass(frozen=True)
class Round:
    ims: Result
    postfix: Result | None  # None without root

    def line(self, load: Load) -> str:
        said = f"mailwright (a) {load.messages / self.ims.accept:5.0f} msg/s, "
        said += f"(b) {load.messages / self.ims.through:5.0f} msg/s, "
        said += f"CPU {self.ims.cpu * 1000 / load.messages:.2f} ms a message"
        if self.postfix is not None:
            said += f"; Postfix accept {load.messages / self.postfix.accept:5.0f} msg/s, "
            said += f"accept and relay {load.messages / self.postfix.through:5.0f} msg/s"
        return said


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        raise BenchError(f"{name} is not installed (Debian: apt-get install postfix)")
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{what} does not listen on {HOST}:{port}")


def smtp_source(port: int, load: Load, messages: int) -> float:
    """One smtp-source run; its wall time in seconds."""
    command = [tool("smtp-source"), "-s", str(load.sessions), "-m", str(messages)]
    command += ["-l", str(load.size), "-f", SENDER, "-t", RECIPIENT, f"{HOST}:{port}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"smtp-source failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def wait_for(condition: Callable[[], bool], timeout: float, what: str, started: float) -> float:
    """Poll until `condition()` holds; the seconds since `started`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.perf_counter() - started


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


# --- mailwright ----------------------------------------------------------------------------------


def start_arlington(folder: Path, profile: Path | None) -> tuple[subprocess.Popen[str], int, Path]:
    """Apply Minasi and start Arlington; (process, SMTP port, mark's Maildir/new)."""
    state = folder / "state"
    # MAILWRIGHT_RUNTIME=off: apply leaves the runtime to us; the host runs on ephemeral ports.
    done = subprocess.run(
        [str(MAILWRIGHT), "apply", str(MINASI), "--state", str(state), "--auto-approve"],
        capture_output=True,
        text=True,
        env={**os.environ, "MAILWRIGHT_RUNTIME": "off"},
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"mailwright apply failed: {done.stderr.strip()}")
    bundle = state / "bundles" / "arlington"
    applied_bundle(state, "Minasi", "arlington", bundle)  # with its certificate from apply
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", "mailwright.runtime.host", str(bundle)]
    command += ["--data", str(state / "hosts" / "arlington"), "--bind", "127.0.0.1"]
    for service in ("pop3", "transfer", "dns", "smtp"):
        command += [f"--{service}-port", "0"]
    log = open(folder / "arlington.log", "w", encoding="utf-8")  # noqa: SIM115 - the child's
    with log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT)
    line = process.stdout.readline() if readable else ""
    found = re.search(r"\bsmtp=127\.0\.0\.1:(\d+)", line)
    if found is None:
        stop(process)
        raise BenchError(f"arlington did not start: {(folder / 'arlington.log').read_text()}")
    maildir = state / "hosts" / "arlington" / "store" / "mark" / "Maildir" / "new"
    return process, int(found[1]), maildir


def count(folder: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(folder))
    except FileNotFoundError:
        return 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process and its children that run (the IMS workers), from
    /proc (proc(5): utime and stime, fields 14 and 15, in clock ticks)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    ticks = 0
    for process in [pid, *map(int, children)]:
        with contextlib.suppress(FileNotFoundError):  # a worker that just ended
            fields = Path(f"/proc/{process}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def bench_mailwright(folder: Path, load: Load, warmup: int, profile: Path | None) -> Result:
    process, port, maildir = start_arlington(folder, profile)
    try:
        if warmup:
            smtp_source(port, load, warmup)
            wait_for(lambda: count(maildir) >= warmup, 300, "the warm-up", time.perf_counter())
        cpu = cpu_seconds(process.pid)
        started = time.perf_counter()
        accept = smtp_source(port, load, load.messages)
        total = warmup + load.messages
        timeout = 60 + load.messages / 10
        through = wait_for(lambda: count(maildir) >= total, timeout, "mark's Maildir", started)
        return Result(accept, through, cpu_seconds(process.pid) - cpu)
    finally:
        stop(process)
        if process.stdout is not None:
            process.stdout.close()


# --- Postfix -------------------------------------------------------------------------------------


def postfix(folder: Path, action: str) -> None:
    done = subprocess.run(
        [tool("postfix"), "-c", str(folder / "conf"), action],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        log = folder / "postfix.log"
        said = log.read_text(encoding="utf-8")[-2000:] if log.exists() else ""
        raise BenchError(f"postfix {action} failed: {done.stderr.strip()}\n{said}")


def bench_postfix(folder: Path, load: Load, warmup: int) -> Result:
    folder.chmod(0o755)
    for sub in ("conf", "queue", "data"):
        (folder / sub).mkdir()
    shutil.chown(folder / "data", user="postfix")
    port, sink_port = free_port(), free_port()
    (folder / "conf" / "main.cf").write_text(MAIN_CF.format(folder=folder, sink_port=sink_port))
    (folder / "conf" / "master.cf").write_text(MASTER_CF.format(port=port))
    total = warmup + load.messages
    # smtp-sink takes what Postfix relays and exits after the last message (-M).
    sink = subprocess.Popen(
        [tool("smtp-sink"), "-u", "root", "-M", str(total), f"{HOST}:{sink_port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(sink_port, "smtp-sink")
        postfix(folder, "start")
        try:
            wait_listening(port, "Postfix's smtpd")
            if warmup:
                smtp_source(port, load, warmup)
            started = time.perf_counter()
            accept = smtp_source(port, load, load.messages)
            timeout = 60 + load.messages / 10
            through = wait_for(lambda: sink.poll() is not None, timeout, "smtp-sink", started)
            return Result(accept, through)
        finally:
            postfix(folder, "stop")
    finally:
        stop(sink)
        if sink.stderr is not None:
            sink.stderr.close()


# --- report --------------------------------------------------------------------------------------


def rate(messages: int, seconds: float) -> str:
    return f"{messages / seconds:8.0f} msg/s  ({messages} in {seconds:6.2f} s)"


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:5.2f}x  (target >= {target}x: {'met' if ratio >= target else 'NOT met'})"


def print_profile(profile: Path) -> None:
    stats = pstats.Stats(str(profile))
    print("\nmailwright host, event-loop thread, by own time:")
    stats.sort_stats("tottime").print_stats(20)
    print("by cumulative time:")
    stats.sort_stats("cumulative").print_stats(25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2048, help="body octets (smtp-source -l)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--rounds", type=int, default=3, help="each side's runs (the median counts)"
    )
    parser.add_argument("--profile", type=Path, help="cProfile output file for Arlington")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    load = Load(args.sessions, args.messages, args.size)
    folder = Path(tempfile.mkdtemp(prefix="mailwright-smtp-bench-"))
    folder.chmod(0o755)  # Postfix's daemons (mail_owner) reach their folders through it
    print(
        f"smtp-source -s {load.sessions} -m {load.messages} -l {load.size} "
        f"-f {SENDER} -t {RECIPIENT}  (warm-up {args.warmup}; {args.rounds} rounds; "
        f"{os.cpu_count()} CPUs)"
    )
    try:
        rounds = [_round(folder / str(n), load, args, n) for n in range(args.rounds)]
        _report(load, rounds)
        if args.profile is not None:
            print_profile(args.profile)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def _round(folder: Path, load: Load, args: argparse.Namespace, n: int) -> Round:
    """Both sides once, in turn: Postfix first every other round, so neither always runs on
    what the other left (the folders go only at the end: see the module's note on deleting)."""
    results: dict[str, Result | None] = {"mailwright": None, "postfix": None}
    order = ["mailwright", "postfix"] if n % 2 == 0 else ["postfix", "mailwright"]
    for side in order:
        (folder / side).mkdir(parents=True)
        if side == "mailwright":
            profile = args.profile if n == 0 else None
            results[side] = bench_mailwright(folder / side, load, args.warmup, profile)
        elif os.geteuid() == 0:
            results[side] = bench_postfix(folder / side, load, args.warmup)
    ims = results["mailwright"]
    assert ims is not None
    found = Round(ims, results["postfix"])
    print(f"round {n + 1}: {found.line(load)}", flush=True)
    return found


def _report(load: Load, rounds: list[Round]) -> None:
    ims = Result(*(statistics.median(getattr(r.ims, f) for r in rounds) for f in _TIMES))
    print(f"median of {len(rounds)} rounds:")
    print(f"mailwright IMS  (a) durable accept:       {rate(load.messages, ims.accept)}")
    print(f"mailwright IMS  (b) accept to mailbox:    {rate(load.messages, ims.through)}")
    cpu = statistics.median(r.ims.cpu for r in rounds) * 1000 / load.messages
    print(f"mailwright IMS  CPU a message:            {cpu:8.2f} ms  (host and IMS workers)")
    if any(r.postfix is None for r in rounds):
        print("Postfix: skipped (a private Postfix instance needs root)")
        return
    pf = Result(*(statistics.median(getattr(r.postfix, f) for r in rounds) for f in _TIMES))
    print(f"Postfix             accept:               {rate(load.messages, pf.accept)}")
    print(f"Postfix             accept and relay:     {rate(load.messages, pf.through)}")
    accept, through = pf.accept / ims.accept, pf.through / ims.through
    print(f"ratio (a) IMS durable accept / Postfix accept:        {verdict(accept, 1.2)}")
    print(f"ratio (b) IMS to mailbox / Postfix accept and relay:  {verdict(through, 1.0)}")


if __name__ == "__main__":
    sys.exit(main())
