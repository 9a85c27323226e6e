"""The organization's own PKI, kept in the state directory: a CA and one certificate per host.

Only the organization talks on the MTA transfer port: the hosts authenticate each other with
mutual TLS, each presenting a certificate for its fqdn and ipv4 issued by the organization's CA,
and trusting nothing but that CA (runtime/tls.py, runtime/mta/transfer.py).

    <state>/pki/<ORG>/            0700
        ca/<n>.pem                the CA of generation n (n = 1, 2, ...), public
        ca/<n>.key                its private key, 0600; kept for the newest generation only
        hosts/<server>.pem        the host's certificate (leaf only), public
        hosts/<server>.key        its private key, 0600

Rotation makes generation n+1; the CA of generation n stays in the trust bundle until the next
rotation or its own expiry, so hosts holding certificates of either CA keep talking while an
apply rolls them. A generation exists once its `.pem` is written, which happens after its `.key`:
a crash in between leaves a key without a certificate, which is ignored and overwritten.

Private keys never leave this module except as the bytes `host_credentials` returns (for the
host's own files); no message of an exception here holds anything but paths and names.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailwright.runtime.durable.files import write_atomic

CA_LIFETIME = datetime.timedelta(days=3652)  # ~10 years
HOST_LIFETIME = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)  # a host certificate this close to expiry is renewed
# A CA this close to its expiry is rotated by `ensure`: a host certificate issued the day before
# must still have its whole lifetime (and the renewal margin) under a CA that is valid.
ROTATE_CA_BEFORE = HOST_LIFETIME + RENEW_BEFORE
# Clocks of the organization's hosts disagree a little; a certificate valid from "now" would be
# refused for a few seconds by a peer whose clock is behind.
BACKDATE = datetime.timedelta(minutes=5)

# File names come from the spec's names; nothing that could climb out of the folder or hide.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class PkiError(Exception):
    """The PKI cannot be read or written; the message names paths, never key material."""


@dataclass(frozen=True)
class HostCredentials:
    """A host's certificate and private key, both PEM."""

    certificate: bytes
    private_key: bytes

    def __repr__(self) -> str:  # the private key must not end up in a log or a traceback
        return f"HostCredentials(certificate=<{len(self.certificate)} bytes>, private_key=<hidden>)"


@dataclass(frozen=True)
class _Authority:
    generation: int
    certificate: x509.Certificate
    pem: bytes


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        # `from None`: the parser's own message could quote what it read.
        raise PkiError(f"cannot read the private key {path}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"the private key {path} is not an ECDSA key")
    return key


class OrganizationPki:
    """The CA and host certificates of one organization under `<state_dir>/pki/<organization>`.

    Every method takes an optional `now` (aware UTC) so tests can move the clock.
    """

    def __init__(self, state_dir: Path, organization: str) -> None:
        if not _SAFE_NAME.fullmatch(organization):
            raise PkiError(f"organization name {organization!r} cannot name a folder")
        self.organization = organization
        self.root = state_dir / "pki" / organization
        self.ca_dir = self.root / "ca"
        self.hosts_dir = self.root / "hosts"

    # --- the CA ---------------------------------------------------------------------------

    def ensure(self, now: datetime.datetime | None = None) -> None:
        """The CA exists: made on first use, rotated when it nears its expiry."""
        now = now or _utcnow()
        self._folders()
        newest = self._newest()
        if newest is None or newest.certificate.not_valid_after_utc - now < ROTATE_CA_BEFORE:
            self._new_authority(now)

    def rotate_ca(self, now: datetime.datetime | None = None) -> None:
        """A new CA signs from now on; the previous one stays trusted during the overlap."""
        self._folders()
        self._new_authority(now or _utcnow())

    def trust_bundle(self, now: datetime.datetime | None = None) -> bytes:
        """PEM of every CA a host accepts: the newest and, during the overlap, the previous
        one; never an expired one (nor one not valid yet)."""
        now = now or _utcnow()
        self.ensure(now)
        return b"".join(authority.pem for authority in self._trusted(now))

    def forget_retired(self, now: datetime.datetime | None = None) -> list[Path]:
        """Delete the CAs no longer trusted and every key but the newest CA's; what went."""
        now = now or _utcnow()
        authorities = self._authorities()
        trusted = {authority.generation for authority in self._trusted(now)}
        newest = authorities[-1].generation if authorities else None
        gone: list[Path] = []
        for path in sorted(self.ca_dir.glob("*.*")) if self.ca_dir.is_dir() else []:
            if not path.stem.isdigit():
                continue
            generation = int(path.stem)
            keep = generation == newest if path.suffix == ".key" else generation in trusted
            if not keep:
                path.unlink()
                gone.append(path)
        return gone

    def _trusted(self, now: datetime.datetime) -> list[_Authority]:
        """The newest CA and the one before it, where valid at `now`."""
        return [
            authority
            for authority in self._authorities()[-2:]
            if authority.certificate.not_valid_before_utc
            <= now
            <= authority.certificate.not_valid_after_utc
        ]

    # --- host certificates ----------------------------------------------------------------

    def host_credentials(
        self, server: str, fqdn: str, ipv4: str, now: datetime.datetime | None = None
    ) -> HostCredentials:
        """The host's certificate and key: the stored ones, byte for byte, while they still
        fit (same fqdn and ipv4, signed by the newest CA, more than RENEW_BEFORE to live);
        otherwise a new key and certificate, stored first."""
        if not _SAFE_NAME.fullmatch(server):
            raise PkiError(f"server name {server!r} cannot name a file")
        address = ipaddress.IPv4Address(ipv4)
        now = now or _utcnow()
        self.ensure(now)
        authority = self._newest()
        assert authority is not None  # ensure() made one
        cert_path, key_path = self.host_paths(server)
        if cert_path.exists() and key_path.exists():
            try:
                certificate_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
            except OSError:
                raise PkiError(f"cannot read {cert_path} or {key_path}") from None
            if self._still_fits(certificate_pem, key_path, authority, fqdn, address, now):
                return HostCredentials(certificate_pem, key_pem)
        return self._issue(server, fqdn, address, authority, now)

    def host_paths(self, server: str) -> tuple[Path, Path]:
        return self.hosts_dir / f"{server}.pem", self.hosts_dir / f"{server}.key"

    def _still_fits(  # noqa: PLR0917 - one check over everything a certificate states
        self,
        certificate_pem: bytes,
        key_path: Path,
        authority: _Authority,
        fqdn: str,
        address: ipaddress.IPv4Address,
        now: datetime.datetime,
    ) -> bool:
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem)
            certificate.verify_directly_issued_by(authority.certificate)
            names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            key = _load_key(key_path)
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound, PkiError):
            return False
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        same_key = key.public_key().public_bytes(*spki) == certificate.public_key().public_bytes(
            *spki
        )
        return (
            same_key
            and names.value.get_values_for_type(x509.DNSName) == [fqdn]
            and names.value.get_values_for_type(x509.IPAddress) == [address]
            and certificate.not_valid_after_utc - now > RENEW_BEFORE
        )

    def _issue(
        self,
        server: str,
        fqdn: str,
        address: ipaddress.IPv4Address,
        authority: _Authority,
        now: datetime.datetime,
    ) -> HostCredentials:
        ca_key = _load_key(self.ca_dir / f"{authority.generation}.key")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, fqdn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization),
            ]
        )
        # A host certificate never outlives the CA that vouches for it.
        expires = min(now + HOST_LIFETIME, authority.certificate.not_valid_after_utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(authority.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(expires)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(digital_signature=True), critical=True)
            # Each host is the server of one hand-off and the client of the next.
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # RFC 6125 §6.4.4: peers check the SAN, not the CN; both names a peer may dial.
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(fqdn), x509.IPAddress(address)]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            # RFC 5280 §4.2.1.1: with two CAs trusted during a rotation, this says which one.
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    authority.certificate.extensions.get_extension_for_class(
                        x509.SubjectKeyIdentifier
                    ).value
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        credentials = HostCredentials(
            certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key)
        )
        cert_path, key_path = self.host_paths(server)
        self._folders()
        # The key first: a certificate on disk always has its key beside it or is re-issued.
        write_atomic(key_path, credentials.private_key, mode=0o600)
        write_atomic(cert_path, credentials.certificate, mode=0o644)
        return credentials

    # --- storage --------------------------------------------------------------------------

    def _folders(self) -> None:
        for folder in (self.root.parent, self.root, self.ca_dir, self.hosts_dir):
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
            except OSError as exc:
                raise PkiError(f"cannot make the folder {folder}: {exc.strerror}") from None

    def _authorities(self) -> list[_Authority]:
        """Every stored CA, oldest first."""
        if not self.ca_dir.is_dir():
            return []
        authorities = []
        for path in self.ca_dir.glob("*.pem"):
            if not path.stem.isdigit():
                continue
            try:
                pem = path.read_bytes()
                authorities.append(
                    _Authority(int(path.stem), x509.load_pem_x509_certificate(pem), pem)
                )
            except (OSError, ValueError):
                raise PkiError(f"cannot read the CA certificate {path}") from None
        return sorted(authorities, key=lambda a: a.generation)

    def _newest(self) -> _Authority | None:
        authorities = self._authorities()
        return authorities[-1] if authorities else None

    def _new_authority(self, now: datetime.datetime) -> None:
        previous = self._authorities()
        generation = previous[-1].generation + 1 if previous else 1
        key = ec.generate_private_key(ec.SECP256R1())
        # Distinct subjects per generation: a verifier holding both CAs never has to choose
        # between two issuers of the same name.
        name = x509.Name(
            [
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"mailwright {self.organization} organization CA"
                ),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"CA generation {generation}"),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_LIFETIME)
            # RFC 5280 §4.2.1.9: a CA that signs host certificates only, never another CA.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        write_atomic(self.ca_dir / f"{generation}.key", _key_pem(key), mode=0o600)
        write_atomic(
            self.ca_dir / f"{generation}.pem",
            certificate.public_bytes(serialization.Encoding.PEM),
            mode=0o644,
        )
        # The retired CAs' keys never sign again: keep no more copies of them than needed.
        for authority in previous:
            (self.ca_dir / f"{authority.generation}.key").unlink(missing_ok=True)


def _usage(
    digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )
