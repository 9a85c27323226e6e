"""The organization's PKI in the state directory: the CA, host certificates, rotation.

openssl, which none of this code drives, judges the certificates: `openssl verify` against the
trust bundle, `openssl x509 -ext` for what they state.
"""

from __future__ import annotations

import datetime
import stat
import subprocess
import traceback
from pathlib import Path

import pytest
from cryptography import x509

from mailwright.compiler.pki import (
    CA_LIFETIME,
    HOST_LIFETIME,
    HostCredentials,
    OrganizationPki,
    PkiError,
)
from tests.helpers import require_tool

ATHENA = ("athena", "athena.dcnw.com", "10.0.0.5")
HERMES = ("hermes", "hermes.dcnw.com", "10.0.0.6")
NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def pki(state: Path) -> OrganizationPki:
    return OrganizationPki(state, "DCNW")


def openssl_verify(
    trust: bytes, certificate: bytes, folder: Path
) -> subprocess.CompletedProcess[str]:
    openssl = require_tool("openssl")
    (folder / "trust.pem").write_bytes(trust)
    (folder / "host.pem").write_bytes(certificate)
    return subprocess.run(
        [
            openssl,
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            "trust.pem",
            "host.pem",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_ca_is_made_once(pki: OrganizationPki) -> None:
    pki.ensure()
    first = {path.name: path.read_bytes() for path in pki.ca_dir.iterdir()}
    pki.ensure()
    pki.host_credentials(*ATHENA)
    assert sorted(first) == ["1.key", "1.pem"]
    assert {path.name: path.read_bytes() for path in pki.ca_dir.iterdir()} == first


def test_the_ca_is_a_ca_of_the_organization_only(pki: OrganizationPki) -> None:
    pki.ensure()
    ca = x509.load_pem_x509_certificate((pki.ca_dir / "1.pem").read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert "CN=mailwright DCNW organization CA" in ca.subject.rfc4514_string()
    assert "O=DCNW" in ca.subject.rfc4514_string()
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert lifetime > datetime.timedelta(days=3600)


def test_keys_are_0600_and_folders_0700(pki: OrganizationPki, state: Path) -> None:
    pki.host_credentials(*ATHENA)
    keys = sorted(state.rglob("*.key"))
    assert [key.name for key in keys] == ["1.key", "athena.key"]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    folders = [state / "pki", pki.root, pki.ca_dir, pki.hosts_dir]
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_openssl_accepts_a_host_certificate_for_its_fqdn_and_ipv4(
    pki: OrganizationPki, tmp_path: Path
) -> None:
    credentials = pki.host_credentials(*ATHENA)
    verified = openssl_verify(pki.trust_bundle(), credentials.certificate, tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = subprocess.run(
        [
            require_tool("openssl"),
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-in",
            "host.pem",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "DNS:athena.dcnw.com" in shown
    assert "IP Address:10.0.0.5" in shown
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in shown
    assert "CN = athena.dcnw.com, O = DCNW" in shown


def test_a_host_certificate_lives_about_a_year(pki: OrganizationPki) -> None:
    certificate = x509.load_pem_x509_certificate(pki.host_credentials(*ATHENA).certificate)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert HOST_LIFETIME <= lifetime <= HOST_LIFETIME + datetime.timedelta(hours=1)


def test_applying_again_returns_the_same_bytes(pki: OrganizationPki) -> None:
    first = pki.host_credentials(*ATHENA)
    again = OrganizationPki(pki.root.parent.parent, "DCNW").host_credentials(*ATHENA)
    assert again == first
    cert_path, key_path = pki.host_paths("athena")
    assert (cert_path.read_bytes(), key_path.read_bytes()) == (first.certificate, first.private_key)


def test_a_new_ipv4_or_fqdn_reissues(pki: OrganizationPki) -> None:
    first = pki.host_credentials(*ATHENA)
    moved = pki.host_credentials("athena", "athena.dcnw.com", "10.0.0.50")
    renamed = pki.host_credentials("athena", "athena2.dcnw.com", "10.0.0.50")
    assert first.certificate != moved.certificate != renamed.certificate
    assert first.private_key != moved.private_key  # a new key with each new certificate
    names = x509.load_pem_x509_certificate(renamed.certificate).extensions
    san = names.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["athena2.dcnw.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.50"]


def test_a_certificate_near_its_expiry_is_renewed(pki: OrganizationPki) -> None:
    first = pki.host_credentials(*ATHENA, now=NOW)
    assert pki.host_credentials(*ATHENA, now=NOW + datetime.timedelta(days=300)) == first
    renewed = pki.host_credentials(*ATHENA, now=NOW + datetime.timedelta(days=340))
    assert renewed != first
    expiry = x509.load_pem_x509_certificate(renewed.certificate).not_valid_after_utc
    assert expiry > NOW + datetime.timedelta(days=700)


def test_a_key_that_does_not_match_its_certificate_reissues(pki: OrganizationPki) -> None:
    first = pki.host_credentials(*ATHENA)
    hermes = pki.host_credentials(*HERMES)
    pki.host_paths("athena")[1].write_bytes(hermes.private_key)  # as if a crash mixed them
    assert pki.host_credentials(*ATHENA).certificate != first.certificate


def test_rotation_keeps_the_previous_ca_trusted_during_the_overlap(
    pki: OrganizationPki, state: Path, tmp_path: Path
) -> None:
    old = pki.host_credentials(*ATHENA)
    old_hermes = pki.host_credentials(*HERMES)
    pki.rotate_ca()
    new = pki.host_credentials(*ATHENA)  # re-issued: not signed by the newest CA
    assert new != old
    assert pki.host_credentials(*HERMES) != old_hermes
    trust = pki.trust_bundle()
    assert trust.count(b"BEGIN CERTIFICATE") == 2
    for certificate in (old.certificate, new.certificate):
        verified = openssl_verify(trust, certificate, tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    assert sorted(path.name for path in pki.ca_dir.iterdir()) == ["1.pem", "2.key", "2.pem"]

    foreign = OrganizationPki(state, "Minasi").host_credentials("athena", *ATHENA[1:])
    refused = openssl_verify(trust, foreign.certificate, tmp_path)
    assert refused.returncode != 0

    pki.rotate_ca()  # the next rotation ends the overlap: generation 1 is no longer trusted
    assert openssl_verify(pki.trust_bundle(), old.certificate, tmp_path).returncode != 0
    assert openssl_verify(pki.trust_bundle(), new.certificate, tmp_path).returncode == 0
    assert pki.forget_retired() == [pki.ca_dir / "1.pem"]


def test_an_expired_ca_is_never_trusted_and_ensure_rotates_before_expiry(
    pki: OrganizationPki,
) -> None:
    pki.ensure(now=NOW)
    nine_years = NOW + CA_LIFETIME - datetime.timedelta(days=300)
    pki.ensure(now=nine_years)  # too close to its end to sign year-long certificates
    assert (pki.ca_dir / "2.pem").exists()
    assert pki.trust_bundle(now=nine_years).count(b"BEGIN CERTIFICATE") == 2
    after = NOW + CA_LIFETIME + datetime.timedelta(days=1)
    assert pki.trust_bundle(now=after) == (pki.ca_dir / "2.pem").read_bytes()
    # No host certificate outlives the CA that signed it.
    last = pki.host_credentials(*ATHENA, now=NOW + CA_LIFETIME - datetime.timedelta(days=1))
    ca = x509.load_pem_x509_certificate((pki.ca_dir / "2.pem").read_bytes())
    expiry = x509.load_pem_x509_certificate(last.certificate).not_valid_after_utc
    assert expiry <= ca.not_valid_after_utc


def test_no_key_material_in_exceptions_or_reprs(pki: OrganizationPki) -> None:
    credentials = pki.host_credentials(*ATHENA)
    assert b"PRIVATE" not in pki.trust_bundle()
    assert "PRIVATE" not in repr(credentials)
    assert repr(credentials) == repr(HostCredentials(credentials.certificate, b"x"))
    ca_key = pki.ca_dir / "1.key"
    key_lines = ca_key.read_text().splitlines()
    # A damaged CA key, as a half-written disk might leave it: unreadable, and not quoted.
    ca_key.write_text("\n".join([*key_lines[:2], "!" + key_lines[2][1:], *key_lines[3:]]))
    with pytest.raises(PkiError) as caught:
        pki.host_credentials("athena", "athena.dcnw.com", "10.0.0.99")
    told = "".join(traceback.format_exception(caught.value))
    assert str(ca_key) in str(caught.value)
    for line in key_lines[1:-1]:
        assert line not in told


@pytest.mark.parametrize("name", ["../etc", ".hidden", "a/b", ""])
def test_names_that_would_leave_the_folder_are_refused(state: Path, name: str) -> None:
    with pytest.raises(PkiError):
        OrganizationPki(state, name)
    with pytest.raises(PkiError):
        OrganizationPki(state, "DCNW").host_credentials(name, "athena.dcnw.com", "10.0.0.5")
