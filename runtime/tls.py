"""TLS for STLS/STARTTLS: the certificate named in the spec, or one made at first start; and the
mutual TLS of the MTA transfer port, where only the organization's own CA is trusted."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(folder: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for `hostname`, made once and kept in `folder`."""
    cert_path, key_path = folder / "tls-cert.pem", folder / "tls-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(certificate: Path, private_key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, private_key)
    return context


# --- the transfer port: mutual TLS inside one organization ----------------------------------


@dataclass(frozen=True)
class ClientTls:
    """How `send_frame` upgrades its connection: the context, and the name the server's
    certificate must hold (its fqdn, or its ipv4 address)."""

    context: ssl.SSLContext
    server_hostname: str


def transfer_server_context(certificate: Path, key: Path, trust: Path) -> ssl.SSLContext:
    """The transfer port's side: this host's certificate; a client certificate is asked for and,
    when sent, must verify against `trust` (the organization's CAs) or the handshake fails.

    CERT_OPTIONAL rather than CERT_REQUIRED: a mail client doing SUBMIT has no certificate and
    authenticates with its password inside TLS; transfer.py refuses XFER and MOVE to a peer that
    did not present one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    # Only the organization's CAs: the system store would let any public certificate in.
    context.load_verify_locations(cafile=trust)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def transfer_client_context(
    trust: Path, certificate: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """The sending side: the server must hold a certificate of the organization for the name it
    was dialled by; with `certificate` and `key`, this host proves itself in turn (XFER, MOVE)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=trust)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if certificate is not None:
        context.load_cert_chain(certificate, key)
    return context
