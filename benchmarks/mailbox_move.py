"""How fast Move Mailbox carries a mailbox from one store host to another.

A two-server organization (alpha and beta, both stores) is applied into a temporary state
directory with the runtime off; Ann's mailbox on alpha gets N messages (default 10,000) of
about S bytes (default 4 KiB) through the store's delivery API, a fifth of them read (in cur/
with a flag). Both hosts run as real processes from their bundles (`python -m
mailwright.runtime.host`, on 127.0.91.1 and .2 at the contract's unprivileged ports; the
transfer between them is mutual TLS, as apply issued the certificates). Then Ann's home_server
becomes beta: `mailwright plan` shows the move (its time is printed too), `mailwright apply`
writes the new serial, both hosts get their new bundle and SIGHUP, and the
clock runs until alpha has removed Ann's folder, which it does once beta answered 250 for every
batch (durable there) and took the delivered-ids log. The script checks that beta holds every
message under its own file name with its own bytes, and prints messages/s and MiB/s.

The anchor, when Dovecot is installed (`dovecot-core`): a private Dovecot instance (generated
minimal config, no protocols, run as `nobody`, stopped by its pid) copies the same Maildir to a
new location with dsync (`doveadm backup -u ann maildir:DEST`), its way to migrate a mailbox,
on the same machine; its time covers the copy and its index files. It moves nothing between
processes over a network and forgets nothing at the source, so it is the cheaper job.

Run: .venv/bin/python benchmarks/mailbox_move.py [--messages 10000] [--size 4096]
A script that prints figures, not a test; `compile_scale.py` runs it as one of its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import argon2

from mailwright.runtime.bundle import applied_bundle
from mailwright.runtime.contract import UNPRIVILEGED_PORTS
from mailwright.runtime.discovery import local_addresses, spec_peers
from mailwright.runtime.store.mailstore import MailStore

SPEC = """\
organization: {{name: Acme, domains: [acme.test]}}
sites:
  - name: Main
    addressing: {{smtp: "%m@acme.test"}}
    servers:
      - {{name: alpha, fqdn: alpha.acme.test, ipv4: 10.9.0.1, roles: [store]}}
      - {{name: beta, fqdn: beta.acme.test, ipv4: 10.9.0.2, roles: [store]}}
mailboxes:
  - {{alias: ann, home_server: {home}, password: "{hash}", given_name: Ann, surname: A}}
"""
MAILWRIGHT = str(Path(sys.executable).with_name("mailwright"))


@dataclass
class MoveResult:
    messages: int
    octets: int
    plan_s: float
    move_s: float
    intact: bool
    dsync_s: float | None = None  # Dovecot's `doveadm backup` of the same Maildir

    def report(self) -> list[str]:
        lines = [
            f"plan of the move (mailwright plan):  {self.plan_s:6.2f} s",
            f"mailwright Move Mailbox of {self.messages} messages "
            f"({self.octets / 2**20:.1f} MiB): {self._rate(self.move_s)}"
            + ("" if self.intact else "  (NOT INTACT: messages missing or changed at beta)"),
        ]
        if self.dsync_s is None:
            return [*lines, "Dovecot not installed: mailwright measured alone"]
        return [
            *lines,
            f"Dovecot dsync (doveadm backup), same Maildir:   {self._rate(self.dsync_s)}",
            f"ratio mailwright / Dovecot: {self.dsync_s / self.move_s:.2f}x",
        ]

    def _rate(self, seconds: float) -> str:
        return (
            f"{seconds:6.2f} s = {self.messages / seconds:,.0f} messages/s, "
            f"{self.octets / seconds / 2**20:.1f} MiB/s"
        )


def _mailwright(state: Path, spec: Path, *args: str) -> str:
    env = {**os.environ, "MAILWRIGHT_RUNTIME": "off"}
    done = subprocess.run(
        [MAILWRIGHT, *args, str(spec), "--state", str(state)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode not in (0, 2):
        raise SystemExit(f"mailwright {args[0]} failed: {done.stderr}")
    return done.stdout


def _seed(state: Path, messages: int, size: int) -> dict[str, bytes]:
    store = MailStore(state / "hosts" / "alpha" / "store")
    filler = ("lorem ipsum " * (size // 12 + 1))[:size]
    for i in range(messages):
        text = f"Message-ID: <m{i}@acme.test>\nSubject: message {i}\n\n{filler}\n"
        store.deliver("ann", f"<m{i}@acme.test>", text.encode())
    maildir = state / "hosts" / "alpha" / "store" / "ann" / "Maildir"
    for path in sorted((maildir / "new").iterdir())[::5]:
        path.rename(maildir / "cur" / f"{path.name}:2,S")
    return _files(maildir)


def _files(maildir: Path) -> dict[str, bytes]:
    return {
        f"{sub}/{p.name}": p.read_bytes()
        for sub in ("new", "cur")
        for p in (maildir / sub).glob("*")
    }


# Each host on a loopback address of its own, at the contract's unprivileged ports; they find
# each other through the bundle's address map, as the local supervisor's hosts do.
ADDRESSES = {"Acme/alpha": "127.0.91.1", "Acme/beta": "127.0.91.2"}


def _bundle(state: Path, server: str) -> Path:
    """The host's bundle of the state's current serial, with its certificate from the state's
    PKI (apply issued it): the transfer port speaks only mutual TLS."""
    serial = json.loads((state / "state.json").read_text(encoding="utf-8"))["serial"]
    tree = state / "artifacts" / str(serial)
    addresses = local_addresses(spec_peers(tree, sorted(ADDRESSES)), ADDRESSES, UNPRIVILEGED_PORTS)
    bundle = state / "bundles" / server
    applied_bundle(state, "Acme", server, bundle, addresses)
    return bundle


@contextmanager
def _host(server: str, state: Path) -> Iterator[subprocess.Popen[str]]:
    ports = [f"--{s}-port={p}" for s, p in UNPRIVILEGED_PORTS.items()]
    where = ("--data", str(state / "hosts" / server), "--bind", ADDRESSES[f"Acme/{server}"])
    bundle = _bundle(state, server)
    process = subprocess.Popen(
        [sys.executable, "-m", "mailwright.runtime.host", str(bundle), *where, *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        if not ready or not process.stdout.readline().startswith("ready "):
            raise SystemExit(f"{server} did not start")
        yield process
    finally:
        process.terminate()
        process.wait(10)


DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols =
ssl = no
mail_location = maildir:{base}/src/%u/Maildir
passdb {{
  driver = static
  args = password=unused
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={base}/src/%u
}}
"""


def measure_dsync(maildir: Path, base: Path) -> float | None:
    """Seconds Dovecot's dsync takes to copy `maildir` (as user ann) to a new Maildir."""
    dovecot, doveadm = shutil.which("dovecot"), shutil.which("doveadm")
    if dovecot is None or doveadm is None:
        return None
    base.parent.chmod(0o755)  # Dovecot's user must reach the copies (the folder is 0700)
    shutil.copytree(maildir, base / "src" / "ann" / "Maildir")
    for folder in ("run", "state", "dst"):
        (base / folder).mkdir()
    subprocess.run(
        ["chown", "-R", "nobody:nogroup", str(base / "src"), str(base / "dst")], check=True
    )
    conf = base / "dovecot.conf"
    conf.write_text(DOVECOT_CONF.format(base=base), encoding="utf-8")
    server = subprocess.Popen([dovecot, "-F", "-c", str(conf)])
    try:
        while not (base / "run" / "auth-userdb").exists():
            time.sleep(0.05)
        started = time.perf_counter()
        copy = [doveadm, "-c", str(conf), "backup", "-u", "ann", f"maildir:{base}/dst/Maildir"]
        subprocess.run(copy, check=True)
        return time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(10)


def measure_move(messages: int = 10_000, size: int = 4096) -> MoveResult:
    with tempfile.TemporaryDirectory(prefix="mailwright-move-") as folder:
        root = Path(folder)
        state, spec = root / "state", root / "acme.yaml"
        hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        password_hash = hasher.hash("bench")
        spec.write_text(SPEC.format(home="alpha", hash=password_hash), encoding="utf-8")
        _mailwright(state, spec, "apply", "--auto-approve")
        seeded = _seed(state, messages, size)
        with _host("alpha", state) as alpha, _host("beta", state) as beta:
            spec.write_text(SPEC.format(home="beta", hash=password_hash), encoding="utf-8")
            started = time.perf_counter()
            _mailwright(state, spec, "plan")
            plan_s = time.perf_counter() - started
            _mailwright(state, spec, "apply", "--auto-approve")
            started = time.perf_counter()
            for server, process in (("alpha", alpha), ("beta", beta)):
                _bundle(state, server)  # serial 2, as the supervisor writes it
                os.kill(process.pid, signal.SIGHUP)
            old = state / "hosts" / "alpha" / "store" / "ann"
            while old.exists():
                time.sleep(0.01)
            move_s = time.perf_counter() - started
        maildir = state / "hosts" / "beta" / "store" / "ann" / "Maildir"
        octets = sum(len(data) for data in seeded.values())
        result = MoveResult(messages, octets, plan_s, move_s, _files(maildir) == seeded)
        result.dsync_s = measure_dsync(maildir, root / "dovecot")
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096, help="bytes of each message's body")
    args = parser.parse_args(argv)
    result = measure_move(args.messages, args.size)
    for line in result.report():
        print(line)
    return 0 if result.intact else 1


if __name__ == "__main__":
    sys.exit(main())
