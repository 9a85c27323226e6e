"""A changed name under `%g.%s` addressing keeps the mailbox and its mail: real POP3 clients.

Acme's site addresses mailboxes as `%g.%s@acme.test`. Jane Doe has mail on alpha (a real host
process); poplib lists her UIDLs and fetchmail (`--keep`, with UIDLs) downloads it. Her given
name becomes Janet: the plan shows one `~ mailbox Acme/jane` with the address change and warns
that mail to Jane.Doe@acme.test will be refused. After the apply and the host's reload, poplib
sees the same messages and UIDLs, and fetchmail downloads nothing again.
"""

from __future__ import annotations

import os
import poplib
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import argon2

from mailwright.runtime.store.mailstore import MailStore
from tests.helpers import Endpoint, Mailwright, Process

SPEC = """\
organization: {{name: Acme, domains: [acme.test]}}
sites:
  - name: Main
    addressing: {{smtp: "%g.%s@acme.test"}}
    servers:
      - {{name: alpha, fqdn: alpha.acme.test, ipv4: 10.9.0.1, roles: [store]}}
mailboxes:
  - {{alias: jane, home_server: alpha, password: "{hash}", given_name: {given}, surname: Doe}}
"""
PASSWORD = "pw-jane"


def uidls(address: tuple[str, int]) -> list[bytes]:
    client = poplib.POP3(*address, timeout=10)
    try:
        client.user("jane")
        client.pass_(PASSWORD)
        return [line.split()[1] for line in client.uidl()[1]]
    finally:
        client.quit()


def fetch(fetchmail: str, home: Path, port: int) -> tuple[int, str]:
    """fetchmail --keep with UIDLs (-U): only mail it has not seen; (exit code, its log)."""
    rcfile = home / ".fetchmailrc"
    rcfile.write_text(f'poll 127.0.0.1 user "jane" there with password "{PASSWORD}"\n')
    rcfile.chmod(0o600)
    command = [fetchmail, "-f", str(rcfile), "-v", "--nosyslog", "-p", "POP3", "-U", "--keep"]
    # fetchmail 6.4 asks for STLS unless told no; the MDA throws the mail away.
    command += ["--sslproto", "", "--port", str(port), "--mda", "cat >/dev/null", "127.0.0.1"]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**env, "HOME": str(home), "FETCHMAILHOME": str(home), "LC_ALL": "C"},
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_a_new_given_name_keeps_the_maildrop_and_its_uidls(
    tmp_path: Path,
    mailwright: Mailwright,
    start_host: Callable[[Path, Path], Process],
    endpoint: Endpoint,
    require_tool: Callable[[str], str],
) -> None:
    fetchmail = require_tool("fetchmail")
    home = tmp_path / "home"
    home.mkdir()
    password_hash = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    spec, state = tmp_path / "acme.yaml", tmp_path / "state"

    def write(given: str) -> list[str]:
        spec.write_text(SPEC.format(hash=password_hash, given=given), encoding="utf-8")
        return [str(spec), "--state", str(state)]

    assert mailwright("apply", *write("Jane"), "--auto-approve").returncode == 0
    store = MailStore(state / "hosts" / "alpha" / "store")
    for i in range(3):
        store.deliver("jane", f"<m{i}@acme.test>", f"Subject: {i}\n\nbody {i}\n".encode())
    host = start_host(state / "artifacts" / "1" / "Acme" / "hosts" / "alpha.json", state)
    pop3 = endpoint(state, "alpha", "pop3")
    before = uidls(pop3)
    code, log = fetch(fetchmail, home, pop3[1])
    assert code == 0, log
    assert log.count(" not flushed") == 3, log  # --keep: all three read, none deleted

    plan = mailwright("plan", *write("Janet"))
    assert plan.returncode == 0, plan.stderr
    assert "  ~ mailbox Acme/jane\n" in plan.stdout
    assert '      address.SMTP: "Jane.Doe@acme.test" → "Janet.Doe@acme.test"\n' in plan.stdout
    assert (
        "Warning: mailbox Acme/jane: mail to SMTP:Jane.Doe@acme.test will be refused from now "
        "on; to keep it, list 'smtp:Jane.Doe@acme.test' in the mailbox's proxy_addresses."
    ) in plan.stdout
    assert mailwright("apply", *write("Janet"), "--auto-approve").returncode == 0
    os.kill(host.pid, signal.SIGHUP)

    assert uidls(pop3) == before
    code, log = fetch(fetchmail, home, pop3[1])
    assert code == 1, log  # fetchmail's "no mail": every UIDL was seen before
    assert (state / "hosts" / "alpha" / "store" / "jane").is_dir()
