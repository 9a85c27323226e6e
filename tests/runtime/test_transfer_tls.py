"""Only the organization talks on the transfer port: STARTTLS (RFC 3207) and mutual TLS.

A real transfer server on 127.0.0.1 (an ephemeral port), on asyncio's loop and under
`uvloop.run` as the hosts run it, with a handler that records what reaches it. The clients are
the standard library's `ssl` over raw sockets, and `send_frame` for the MTA's own side.
Certificates come from the organizations' PKI (compiler/pki.py) in a temporary state folder.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
import uvloop

from mailwright.compiler.pki import OrganizationPki
from mailwright.runtime.mta import transfer
from mailwright.runtime.mta.transfer import TransferError, send_frame
from mailwright.runtime.tls import ClientTls, transfer_client_context, transfer_server_context
from tests.helpers import LOOPBACK

TIMEOUT = 10.0
QUEUED = "250 2.0.0 queued test"
DOCUMENT: dict[str, Any] = {"message": b"internal bytes", "rcpt": [], "from": "hermes"}
ATHENA_FQDN = "athena.dcnw.com"

Runner = Callable[[Coroutine[Any, Any, None]], None]
Record = tuple[str, dict[str, Any], str, str]


@dataclass(frozen=True)
class Host:
    """A host's files as the wiring will lay them out: certificate, key, the trust bundle."""

    certificate: Path
    key: Path
    trust: Path

    def server(self) -> Callable[[], ssl.SSLContext]:
        return lambda: transfer_server_context(self.certificate, self.key, self.trust)

    def client(self, name: str = ATHENA_FQDN, certificate: bool = True) -> ClientTls:
        if not certificate:
            return ClientTls(transfer_client_context(self.trust), name)
        return ClientTls(transfer_client_context(self.trust, self.certificate, self.key), name)


def host_files(pki: OrganizationPki, folder: Path, server: str, fqdn: str) -> Host:
    """`server`'s credentials (for 127.0.0.1) and the current trust bundle, written to
    `folder`: a snapshot, so a later rotation does not change them under a running test."""
    credentials = pki.host_credentials(server, fqdn, LOOPBACK)
    folder.mkdir(parents=True, exist_ok=True)
    host = Host(folder / "cert.pem", folder / "key.pem", folder / "trust.pem")
    host.certificate.write_bytes(credentials.certificate)
    host.key.write_bytes(credentials.private_key)
    host.trust.write_bytes(pki.trust_bundle())
    return host


@pytest.fixture
def dcnw(tmp_path: Path) -> OrganizationPki:
    return OrganizationPki(tmp_path / "state", "DCNW")


@pytest.fixture
def athena(dcnw: OrganizationPki, tmp_path: Path) -> Host:
    return host_files(dcnw, tmp_path / "athena", "athena", ATHENA_FQDN)


@pytest.fixture
def hermes(dcnw: OrganizationPki, tmp_path: Path) -> Host:
    return host_files(dcnw, tmp_path / "hermes", "hermes", "hermes.dcnw.com")


@pytest.fixture
def intruder(tmp_path: Path) -> Host:
    """A host of another organization, calling itself Hermes."""
    minasi = OrganizationPki(tmp_path / "state", "Minasi")
    return host_files(minasi, tmp_path / "intruder", "hermes", "hermes.dcnw.com")


# --- the server: in a thread of its own, run as the hosts run it -------------------------------


class Recorder:
    """The MTA's stand-in: every frame that reaches the handler."""

    def __init__(self) -> None:
        self.frames: list[Record] = []

    async def __call__(
        self, verb: str, document: dict[str, Any], peer: str, certificate: str
    ) -> str:
        self.frames.append((verb, document, peer, certificate))
        return QUEUED


Serve = Callable[[Callable[[], ssl.SSLContext] | None], int]


@pytest.fixture(params=["asyncio", "uvloop"])
def runner(request: pytest.FixtureRequest) -> Runner:
    """asyncio's own loop, and uvloop's as the hosts run (runtime/host)."""
    run: Runner = asyncio.run if request.param == "asyncio" else uvloop.run
    return run


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def serve(runner: Runner, recorder: Recorder) -> Iterator[Serve]:
    """Start transfer servers handing frames to `recorder`; each one's port."""
    stops: list[Callable[[], object]] = []
    threads: list[threading.Thread] = []

    def start(tls: Callable[[], ssl.SSLContext] | None) -> int:
        ready: queue.Queue[int] = queue.Queue()

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            server = await transfer.serve(recorder, LOOPBACK, 0, tls=tls)
            stops.append(lambda: loop.call_soon_threadsafe(stop.set))
            ready.put(server.sockets[0].getsockname()[1])
            await stop.wait()
            server.close()

        thread = threading.Thread(target=runner, args=(main(),), daemon=True)
        thread.start()
        threads.append(thread)
        return ready.get(timeout=TIMEOUT)

    yield start
    for stop in stops:
        stop()
    for thread in threads:
        thread.join(TIMEOUT)


# --- blocking clients of the standard library ------------------------------------------------


def frame(verb: str, document: dict[str, Any] = DOCUMENT) -> bytes:
    data = cbor2.dumps(document)
    return f"{verb} {len(data)}\r\n".encode() + data


def read_line(connection: socket.socket) -> str:
    line = b""
    while not line.endswith(b"\r\n"):
        octet = connection.recv(1)
        if not octet:
            break
        line += octet
    return line.decode("latin-1").strip()


def command(connection: socket.socket, data: bytes) -> str:
    connection.sendall(data)
    return read_line(connection)


def connect(port: int) -> socket.socket:
    return socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)


def upgraded(port: int, client: ClientTls) -> ssl.SSLSocket:
    """Connected, STARTTLS answered with 220, and the TLS handshake done."""
    plain = connect(port)
    try:
        assert command(plain, b"STARTTLS\r\n") == transfer.READY_TO_START_TLS
        return client.context.wrap_socket(plain, server_hostname=client.server_hostname)
    except BaseException:
        plain.close()
        raise


def xfer_after_handshake(port: int, client: ClientTls) -> str:
    """The reply to an XFER over TLS. Under TLS 1.3 the client's handshake ends before the
    server has judged the client's certificate: a refusal arrives as an alert (an SSLError)
    or a close ("") at the first read."""
    with upgraded(port, client) as connection:
        return command(connection, frame("XFER"))


def send(port: int, verb: str, tls: ClientTls | None, document: dict[str, Any] = DOCUMENT) -> str:
    return asyncio.run(send_frame(LOOPBACK, port, verb, document, tls=tls))


# --- before TLS -----------------------------------------------------------------------------


def test_clear_text_gets_530_and_nothing_reaches_the_handler(
    serve: Serve, athena: Host, recorder: Recorder
) -> None:
    port = serve(athena.server())
    with connect(port) as connection:
        # RFC 3207 §4; the frame is read past, so the session stays in step.
        assert command(connection, frame("XFER")) == transfer.STARTTLS_FIRST
        big = {**DOCUMENT, "message": b"x" * (1024 * 1024)}
        assert command(connection, frame("SUBMIT", big)) == transfer.STARTTLS_FIRST
        assert command(connection, b"NOOP\r\n") == transfer.STARTTLS_FIRST
        # ... and after all that the client may still upgrade.
        assert command(connection, b"STARTTLS\r\n") == transfer.READY_TO_START_TLS
    with connect(port) as connection:
        assert command(connection, b"MOVE 999999999999\r\n") == transfer.STARTTLS_FIRST
        assert connection.recv(1) == b""  # a frame too big to read past: hung up
    with connect(port) as connection:
        assert command(connection, b"QUIT\r\n") == "221 2.0.0 bye"
    assert recorder.frames == []


def test_clear_text_pipelined_after_starttls_is_never_handled(
    serve: Serve, athena: Host, recorder: Recorder
) -> None:
    """CVE-2011-0411's command injection: text sent with STARTTLS must not count as secure."""
    port = serve(athena.server())
    with connect(port) as connection:
        connection.sendall(b"STARTTLS\r\n" + frame("SUBMIT"))
        assert read_line(connection) == transfer.READY_TO_START_TLS
        assert connection.recv(1) == b""
    assert recorder.frames == []


def test_starttls_takes_no_parameters_and_tls_trouble_is_temporary(
    serve: Serve, athena: Host, hermes: Host, recorder: Recorder
) -> None:
    port = serve(athena.server())
    with connect(port) as connection:
        assert command(connection, b"STARTTLS now\r\n").startswith("501 5.5.4")

    def broken() -> ssl.SSLContext:
        raise FileNotFoundError("no certificate yet")

    with connect(serve(broken)) as connection:
        assert command(connection, b"STARTTLS\r\n").startswith("454 4.7.0")
    with pytest.raises(TransferError) as caught:
        send(serve(broken), "XFER", hermes.client())
    assert caught.value.temporary
    assert recorder.frames == []


# --- mutual TLS -----------------------------------------------------------------------------


def test_xfer_and_move_with_a_certificate_of_the_organization(
    serve: Serve, athena: Host, hermes: Host, recorder: Recorder
) -> None:
    port = serve(athena.server())
    assert send(port, "XFER", hermes.client()) == QUEUED
    assert send(port, "MOVE", hermes.client()) == QUEUED
    assert recorder.frames == [
        ("XFER", DOCUMENT, LOOPBACK, "hermes.dcnw.com"),
        ("MOVE", DOCUMENT, LOOPBACK, "hermes.dcnw.com"),
    ]


def test_a_large_frame_over_tls(
    serve: Serve, athena: Host, hermes: Host, recorder: Recorder
) -> None:
    """Megabytes through the upgraded stream: its flow control after start_tls holds."""
    document = {**DOCUMENT, "message": bytes(range(256)) * (24 * 1024)}  # 6 MiB
    assert send(serve(athena.server()), "XFER", hermes.client(), document) == QUEUED
    assert recorder.frames[0][1] == document


def test_submit_needs_only_tls_xfer_and_move_a_certificate(
    serve: Serve, athena: Host, recorder: Recorder
) -> None:
    port = serve(athena.server())
    client = athena.client(certificate=False)  # a mail client: the trust, no certificate
    with upgraded(port, client) as connection:
        assert command(connection, frame("SUBMIT")) == QUEUED
        for verb in ("XFER", "MOVE"):
            assert command(connection, frame(verb)) == (
                f"530 5.7.1 {verb} needs a certificate of this organization"
            )
        assert command(connection, b"STARTTLS\r\n").startswith("503 5.5.1")
        assert command(connection, b"QUIT\r\n") == "221 2.0.0 bye"
    assert send(port, "SUBMIT", client) == QUEUED
    assert recorder.frames == [
        ("SUBMIT", DOCUMENT, LOOPBACK, ""),
        ("SUBMIT", DOCUMENT, LOOPBACK, ""),
    ]


def test_a_certificate_of_another_organization_gets_nothing(
    serve: Serve, athena: Host, intruder: Host, recorder: Recorder
) -> None:
    port = serve(athena.server())
    # The intruder trusts DCNW's CA, so only the server's refusal is tested here.
    intruding = ClientTls(
        transfer_client_context(athena.trust, intruder.certificate, intruder.key), ATHENA_FQDN
    )
    try:
        reply = xfer_after_handshake(port, intruding)
    except (ssl.SSLError, ConnectionError):
        reply = ""
    assert reply == ""
    with pytest.raises(TransferError):
        send(port, "XFER", intruding)
    assert recorder.frames == []


def test_the_client_refuses_a_server_of_another_organization(
    serve: Serve, intruder: Host, hermes: Host, recorder: Recorder
) -> None:
    port = serve(intruder.server())  # claims hermes.dcnw.com, signed by Minasi's CA
    with pytest.raises(TransferError, match="TLS with"):
        send(port, "XFER", hermes.client("hermes.dcnw.com"))
    assert recorder.frames == []


def test_the_client_checks_the_name_it_dialled(
    serve: Serve, athena: Host, hermes: Host, recorder: Recorder
) -> None:
    port = serve(athena.server())
    with pytest.raises(TransferError, match="TLS with"):
        send(port, "XFER", hermes.client("hermes.dcnw.com"))
    assert send(port, "XFER", hermes.client(LOOPBACK)) == QUEUED  # the ipv4 SAN
    assert len(recorder.frames) == 1


def test_send_frame_never_falls_back_to_clear_text(
    serve: Serve, hermes: Host, recorder: Recorder
) -> None:
    port = serve(None)  # a host not upgraded yet: STARTTLS is an unknown command there
    with pytest.raises(TransferError) as caught:
        send(port, "XFER", hermes.client())
    assert caught.value.temporary
    assert recorder.frames == []
    assert send(port, "XFER", None) == QUEUED  # without tls, clear text as before
    assert recorder.frames == [("XFER", DOCUMENT, LOOPBACK, "")]


def test_send_frame_under_uvloop(serve: Serve, athena: Host, hermes: Host) -> None:
    port = serve(athena.server())
    replies: list[str] = []

    async def hand_off() -> None:
        replies.append(await send_frame(LOOPBACK, port, "XFER", DOCUMENT, tls=hermes.client()))

    uvloop.run(hand_off())
    assert replies == [QUEUED]


# --- rotation -------------------------------------------------------------------------------


def test_both_cas_are_trusted_while_an_apply_rolls_the_hosts(
    serve: Serve,
    dcnw: OrganizationPki,
    athena: Host,
    hermes: Host,
    recorder: Recorder,
) -> None:
    """After `rotate_ca`, hosts re-issued under the new CA and hosts still holding the old
    certificates hand mail to each other both ways."""
    tmp_path = athena.trust.parent.parent
    dcnw.rotate_ca()
    new_athena = host_files(dcnw, tmp_path / "athena-new", "athena", ATHENA_FQDN)
    new_hermes = host_files(dcnw, tmp_path / "hermes-new", "hermes", "hermes.dcnw.com")
    assert new_hermes.certificate.read_bytes() != hermes.certificate.read_bytes()
    # The not-yet-rolled hosts got the new bundle first (it holds both CAs).
    for old in (athena, hermes):
        old.trust.write_bytes(new_athena.trust.read_bytes())

    rolled = serve(new_athena.server())
    assert send(rolled, "XFER", hermes.client()) == QUEUED  # old certificate, new server
    waiting = serve(athena.server())
    assert send(waiting, "XFER", new_hermes.client()) == QUEUED  # new certificate, old server
    assert [frame[3] for frame in recorder.frames] == ["hermes.dcnw.com"] * 2

    dcnw.rotate_ca()  # the next rotation ends the overlap for generation 1
    newest = host_files(dcnw, tmp_path / "athena-newest", "athena", ATHENA_FQDN)
    with pytest.raises(TransferError):
        send(serve(newest.server()), "XFER", hermes.client())
    assert len(recorder.frames) == 2
