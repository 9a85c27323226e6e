"""Only the organization talks on the transfer port: real hosts, their certificates from `apply`.

Acme (two store servers, alpha and beta) is applied with the runtime off and its hosts run from
bundles with the state's PKI (tests/helpers.py host_bundle). A client in clear text, one with a
certificate of another organization's CA and one without a certificate get nothing queued; a
certified server cannot pass its mail off as another's; SUBMIT needs only TLS. `apply
--rotate-ca` gives the organization a new CA while mail keeps flowing, and a bundle without
credentials does not start a host.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import argon2
import cbor2
import pytest

from mailwright.compiler.pki import OrganizationPki
from mailwright.runtime.bundle import write_bundle
from mailwright.runtime.formats.message import Address, Recipient, encode, new_message
from mailwright.runtime.mta.transfer import TransferError, recipients_payload, send_frame
from mailwright.runtime.tls import ClientTls, transfer_client_context
from tests.helpers import (
    LOOPBACK,
    Endpoint,
    Mailwright,
    Messages,
    Process,
    WaitUntil,
    bundle_applied,
    transfer_tls,
    tree,
)

ANN, BOB = "ann@acme.test", "bob@acme.test"
DELIVERY_TIMEOUT = 30.0
SPEC = """\
organization: {{name: Acme, domains: [acme.test]}}
sites:
  - name: Main
    addressing: {{smtp: "%m@acme.test"}}
    servers:
      - {{name: alpha, fqdn: alpha.acme.test, ipv4: 10.9.0.1, roles: [store]}}
      - {{name: beta, fqdn: beta.acme.test, ipv4: 10.9.0.2, roles: [store]}}
mailboxes:
  - {{alias: ann, home_server: alpha, password: "{hash}", given_name: Ann, surname: Alpha}}
  - {{alias: bob, home_server: beta, password: "{hash}", given_name: Bob, surname: Beta}}
"""
PASSWORD = "pw-acme"
NO_REPLY_CODE = re.compile(r"^(?!\d{3} )")  # a TransferError raised before any reply


@dataclass
class Acme:
    spec: Path
    state: Path
    hosts: dict[str, Process]

    def config(self, server: str, serial: int = 1) -> Path:
        return self.state / "artifacts" / str(serial) / "Acme" / "hosts" / f"{server}.json"

    def queued(self, server: str) -> list[Path]:
        return sorted((self.state / "hosts" / server / "queue").glob("*.msg"))

    def events(self, server: str, message_id: str) -> list[dict[str, Any]]:
        log = self.state / "hosts" / server / "tracking.jsonl"
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        return [r for r in map(json.loads, lines) if r["message_id"] == message_id]

    def loaded(self, server: str) -> int | None:
        report = json.loads((self.state / "hosts" / server / "loaded.json").read_text())
        serial: int | None = report["serial"]
        return serial


def applied(folder: Path, mailwright: Mailwright) -> tuple[Path, Path]:
    """Acme applied to `folder/state` (runtime off); (spec, state)."""
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    spec = folder / "acme.yaml"
    spec.write_text(SPEC.format(hash=hasher.hash(PASSWORD)), encoding="utf-8")
    state = folder / "state"
    done = mailwright("apply", str(spec), "--state", str(state), "--auto-approve")
    assert done.returncode == 0, done.stderr
    return spec, state


def start(
    folder: Path, mailwright: Mailwright, start_host: Callable[[Path, Path], Process]
) -> Acme:
    spec, state = applied(folder, mailwright)
    acme = Acme(spec, state, {})
    for server in ("alpha", "beta"):
        acme.hosts[server] = start_host(acme.config(server), state)
    return acme


@pytest.fixture(scope="module")
def acme(
    tmp_path_factory: pytest.TempPathFactory,
    mailwright: Mailwright,
    start_host: Callable[[Path, Path], Process],
) -> Acme:
    """alpha and beta running for the module's tests that only knock on the door."""
    return start(tmp_path_factory.mktemp("trust"), mailwright, start_host)


def xfer_document(subject: str, sender: str = "alpha") -> tuple[str, dict[str, Any]]:
    message = new_message(
        Address(ANN, "Ann Alpha"),
        recipients=[Recipient(Address(BOB))],
        subject=subject,
        body="b\n",
        domain="acme.test",
    )
    rcpt = recipients_payload([Address(BOB)])
    return message.message_id, {"message": encode(message), "rcpt": rcpt, "from": sender}


def submit_document(subject: str, password: str) -> tuple[str, dict[str, Any]]:
    message_id, document = xfer_document(subject)
    del document["from"]
    return message_id, {**document, "user": "ann", "password": password}


def frame(verb: str, document: dict[str, Any]) -> bytes:
    data = cbor2.dumps(document)
    return f"{verb} {len(data)}\r\n".encode() + data


def send(where: tuple[str, int], verb: str, document: dict[str, Any], tls: ClientTls) -> str:
    return asyncio.run(send_frame(*where, verb, document, tls))


def nothing_queued(acme: Acme, message_id: str) -> None:
    for server in ("alpha", "beta"):
        assert acme.queued(server) == []
        assert acme.events(server, message_id) == []


# --- who gets in ----------------------------------------------------------------------------


def test_clear_text_gets_must_starttls_and_nothing_is_queued(
    acme: Acme, endpoint: Endpoint
) -> None:
    message_id, document = xfer_document("clear text")
    with socket.create_connection(endpoint(acme.state, "beta", "transfer"), timeout=10) as raw:
        raw.sendall(frame("XFER", document))
        reply = raw.makefile("rb").readline().decode()
    # RFC 3207 §4: a server that requires TLS refuses every command but STARTTLS first.
    assert reply.startswith("530 5.7.0 "), reply
    nothing_queued(acme, message_id)


def test_a_certificate_of_another_organization_fails_the_handshake(
    acme: Acme, endpoint: Endpoint, tmp_path: Path
) -> None:
    """Even one that names beta's own fqdn and address: its CA is not Acme's."""
    intruder = OrganizationPki(tmp_path, "Intruder")
    intruder.host_credentials("alpha", "alpha.acme.test", "10.9.0.1")
    trust = acme.state / "pki" / "Acme" / "trust.pem"
    context = transfer_client_context(trust, *intruder.host_paths("alpha"))
    message_id, document = xfer_document("intruder")
    where = endpoint(acme.state, "beta", "transfer")
    with pytest.raises(TransferError) as refused:
        send(where, "XFER", document, ClientTls(context, "beta.acme.test"))
    assert NO_REPLY_CODE.match(str(refused.value)), str(refused.value)  # no frame was answered
    nothing_queued(acme, message_id)


def test_a_server_of_another_organization_is_not_trusted(
    acme: Acme, endpoint: Endpoint, tmp_path: Path
) -> None:
    """The other way round: alpha's trust refuses a transfer port whose certificate is not of
    the organization (here: beta's port, checked against another organization's CA)."""
    intruder = OrganizationPki(tmp_path, "Intruder")
    intruder.ensure()
    context = transfer_client_context(intruder.root / "ca" / "1.pem")
    with pytest.raises(TransferError, match=r"TLS with .* failed"):
        send(
            endpoint(acme.state, "beta", "transfer"),
            "SUBMIT",
            submit_document("x", PASSWORD)[1],
            ClientTls(context, "beta.acme.test"),
        )


def test_without_a_certificate_xfer_is_refused_and_submit_authenticates(
    acme: Acme, endpoint: Endpoint
) -> None:
    where = endpoint(acme.state, "beta", "transfer")
    tls = transfer_tls(acme.state, "Acme", "beta")  # the organization's trust, no certificate
    message_id, document = xfer_document("no certificate")
    with pytest.raises(TransferError, match=r"^530 5\.7\.1 XFER needs a certificate"):
        send(where, "XFER", document, tls)
    # SUBMIT reaches the MTA over TLS: its password is checked (and here refused).
    submitted, submission = submit_document("wrong password", "not-the-password")
    with pytest.raises(TransferError, match=r"^535 5\.7\.8 authentication failed"):
        send(where, "SUBMIT", submission, tls)
    nothing_queued(acme, message_id)
    nothing_queued(acme, submitted)


def test_a_server_cannot_hand_over_in_another_servers_name(acme: Acme, endpoint: Endpoint) -> None:
    """alpha's certificate, a frame that says it is from beta: refused, nothing queued."""
    message_id, document = xfer_document("impostor", sender="beta")
    tls = transfer_tls(acme.state, "Acme", "beta", as_server="alpha")
    with pytest.raises(TransferError, match=r"^550 5\.7\.1 beta is not the server certified"):
        send(endpoint(acme.state, "beta", "transfer"), "XFER", document, tls)
    nothing_queued(acme, message_id)
    # The same frame in alpha's own name is taken.
    message_id, document = xfer_document("alpha itself")
    reply = send(endpoint(acme.state, "beta", "transfer"), "XFER", document, tls)
    assert reply == f"250 2.0.0 queued {message_id}"


# --- what apply issues ----------------------------------------------------------------------


def test_no_private_key_in_the_compiled_tree_or_the_plan(
    acme: Acme, mailwright: Mailwright, tmp_path: Path
) -> None:
    saved = tmp_path / "plan.json"
    plan = mailwright("plan", str(acme.spec), "--state", str(acme.state), "--out", str(saved))
    assert plan.returncode == 0, plan.stderr
    as_json = mailwright("plan", str(acme.spec), "--state", str(acme.state), "--json")
    compiled = mailwright("compile", str(acme.spec), "--out", str(tmp_path / "build"))
    assert compiled.returncode == 0, compiled.stderr
    outputs = [plan.stdout, plan.stderr, as_json.stdout, saved.read_text(encoding="utf-8")]
    files = {**tree(acme.state / "artifacts"), **tree(tmp_path / "build")}
    assert files
    assert not [name for name, data in files.items() if b"PRIVATE KEY" in data]
    assert not [text for text in outputs if "PRIVATE KEY" in text]
    # The keys themselves: the owner's alone.
    pki = acme.state / "pki" / "Acme"
    keys = [*pki.glob("ca/*.key"), *pki.glob("hosts/*.key")]
    assert sorted(p.name for p in keys) == ["1.key", "alpha.key", "beta.key"]
    assert {p.stat().st_mode & 0o777 for p in keys} == {0o600}
    bundle_key = acme.state / "bundles" / "Acme" / "beta" / "tls" / "host.key"
    assert bundle_key.stat().st_mode & 0o777 == 0o600


def test_a_bundle_without_credentials_does_not_start(acme: Acme, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    write_bundle(acme.config("alpha").parents[1], "alpha", bundle, None)
    command = [sys.executable, "-m", "mailwright.runtime.host", str(bundle)]
    command += ["--data", str(tmp_path / "data"), "--bind", LOOPBACK]
    for service in ("pop3", "transfer", "smtp", "dns"):
        command += [f"--{service}-port", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"error: {bundle} has no transfer certificate (tls/host.pem): "
        "make bundles with mailwright bundle or apply\n"
    )


# --- rotation -------------------------------------------------------------------------------


@pytest.fixture
def rotating(
    tmp_path: Path, mailwright: Mailwright, start_host: Callable[[Path, Path], Process]
) -> Iterator[Acme]:
    acme = start(tmp_path, mailwright, start_host)
    yield acme
    for process in acme.hosts.values():
        process.terminate()
        process.wait(10)


def ann_sends(mailwright: Mailwright, state: Path, subject: str) -> str:
    done = mailwright(
        *("send", "--from", ANN, "--to", BOB, "--subject", subject, "--body", "b"),
        *("--password-env", "MW_TEST_PASSWORD", "--state", str(state)),
        env={"MW_TEST_PASSWORD": PASSWORD},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_rotating_the_ca_drops_no_mail(
    rotating: Acme,
    mailwright: Mailwright,
    maildir_messages: Messages,
    wait_until: WaitUntil,
    endpoint: Endpoint,
) -> None:
    acme = rotating

    def delivered(message_id: str) -> None:
        def found() -> bool:
            mail = maildir_messages(acme.state, "beta", "bob")
            return any(m["Message-ID"] == message_id for m in mail)

        wait_until(found, DELIVERY_TIMEOUT, f"{message_id} in Bob's mailbox")

    delivered(ann_sends(mailwright, acme.state, "before"))
    done = mailwright(
        "apply", str(acme.spec), "--state", str(acme.state), "--auto-approve", "--rotate-ca"
    )
    assert done.returncode == 0, done.stderr
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    trust = (acme.state / "pki" / "Acme" / "trust.pem").read_text(encoding="ascii")
    assert trust.count("BEGIN CERTIFICATE") == 2  # the new CA and the one before it

    def reload(server: str) -> None:
        bundle_applied(acme.state, "Acme", server)
        acme.hosts[server].send_signal(signal.SIGHUP)
        wait_until(lambda: acme.loaded(server) == 2, DELIVERY_TIMEOUT, f"{server} on serial 2")

    # Mid-roll: alpha has its new certificate, beta trusts only the old CA yet. The hand-off
    # fails for now; the message waits in alpha's queue and goes once beta reloaded too.
    reload("alpha")
    during = ann_sends(mailwright, acme.state, "during the roll")

    def deferred() -> bool:
        return any(e["event"] == "deferred" for e in acme.events("alpha", during))

    wait_until(deferred, DELIVERY_TIMEOUT, "alpha to defer the hand-off to beta")
    reload("beta")
    delivered(during)
    delivered(ann_sends(mailwright, acme.state, "after"))

    # beta now serves its certificate of the new CA: a client trusting that CA alone verifies it.
    only_new = ssl.create_default_context(cafile=acme.state / "pki" / "Acme" / "ca" / "2.pem")
    with socket.create_connection(endpoint(acme.state, "beta", "transfer"), timeout=10) as raw:
        raw.sendall(b"STARTTLS\r\n")
        assert raw.recv(100).startswith(b"220 ")
        with only_new.wrap_socket(raw, server_hostname="beta.acme.test") as tls:
            assert tls.getpeercert() is not None
            tls.sendall(b"QUIT\r\n")
