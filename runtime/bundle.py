"""A host's bundle: one folder with everything one server needs to run, and nothing another host
wrote. `mailwright host run BUNDLE` serves it; the local supervisor runs its hosts from bundles
too, so there is one way to start a host.

    bundle.json       which server, of which organization and applied serial (written last)
    host.json         its compiled host config (hosts/<server>.json)
    gal.json, gwart.json, servers.json, zones/*.zone
                      the organization's shared artifacts, as the host config lists them
    addresses.json    the local runtime's address map (contract.AddressMap); absent elsewhere
    tls/server.pem, tls/server.key
                      the certificate the spec names for SMTP and POP3, if any
    tls/ca.pem, tls/host.pem, tls/host.key
                      the organization's trusted CAs and this host's certificate from them

Private keys are 0600; everything else is reproducible from the applied state. A bundle of an
applied serial is never changed: a new serial is a new bundle, and a host reloads by reading
its bundle path again (the supervisor points it at the new one by swapping a symlink, as
Kubernetes does with a mounted ConfigMap).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from mailwright.runtime.contract import (
    AddressMap,
    BundleManifest,
    HostConfig,
    read_address_map,
    read_bundle_manifest,
    read_host_config,
)
from mailwright.runtime.durable.files import write_atomic

MANIFEST = "bundle.json"
HOST_CONFIG = "host.json"
ADDRESSES = "addresses.json"
ZONES = "zones"
SECRET = 0o600


class BundleError(Exception):
    """A folder that is not a bundle this mailwright can run; one line naming it."""


@dataclass(frozen=True)
class Credentials:
    """This host's certificate from the organization's CA, and the CAs its peers trust."""

    trust: Path
    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: BundleManifest

    @classmethod
    def open(cls, path: Path) -> Bundle:
        if not (path / MANIFEST).is_file():
            raise BundleError(f"{path} is not a bundle: it has no {MANIFEST}")
        return cls(path, read_bundle_manifest(path / MANIFEST))

    def config(self) -> HostConfig:
        return read_host_config(self.path / HOST_CONFIG)

    def addresses(self) -> AddressMap | None:
        path = self.path / ADDRESSES
        return read_address_map(path) if path.exists() else None

    def zones(self) -> list[Path]:
        return sorted((self.path / ZONES).glob("*.zone"))

    def tls_file(self, name: str) -> Path | None:
        path = self.path / "tls" / name
        return path if path.exists() else None


def write_bundle(  # noqa: PLR0917 - one bundle is all of these
    organization: Path,
    server: str,
    out: Path,
    serial: int | None,
    credentials: Credentials | None = None,
    addresses: AddressMap | None = None,
    extra_zones: Iterable[Path] = (),
    link: bool = False,
) -> None:
    """The bundle of `server` from the organization's compiled folder. `link` hard-links the
    artifacts instead of copying them (the supervisor's bundles beside an applied tree: a GAL
    of 100,000 mailboxes is not copied for every host); keys are always copied."""
    config_path = organization / "hosts" / f"{server}.json"
    config = read_host_config(config_path)
    if out.exists():
        shutil.rmtree(out)  # a bundle is written whole, or not at all
    out.mkdir(parents=True)
    put = _linker if link else _copier
    put(config_path, out / HOST_CONFIG)
    for name in config.shared:
        put(organization / name, out / name)
    if config.server.serves("dns"):
        for zone in extra_zones:
            if not (out / ZONES / zone.name).exists():
                put(zone, out / ZONES / zone.name)
    _tls(config, credentials, out / "tls")
    if addresses is not None:
        write_atomic(out / ADDRESSES, orjson.dumps(addresses.as_json(), option=_JSON))
    manifest = BundleManifest(config.organization, server, serial)
    write_atomic(out / MANIFEST, orjson.dumps(manifest.as_json(), option=_JSON))


_JSON = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE


def _tls(config: HostConfig, credentials: Credentials | None, folder: Path) -> None:
    files: list[tuple[Path, str, int]] = []
    if config.tls is not None:
        files += [(Path(config.tls.certificate), "server.pem", 0o644)]
        files += [(Path(config.tls.private_key), "server.key", SECRET)]
    if credentials is not None:
        files += [(credentials.trust, "ca.pem", 0o644)]
        files += [(credentials.certificate, "host.pem", 0o644)]
        files += [(credentials.private_key, "host.key", SECRET)]
    if files:
        folder.mkdir(mode=0o700)
    for source, name, mode in files:
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read {source}: {exc.strerror}") from None
        write_atomic(folder / name, data, mode=mode)


def _copier(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _linker(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, target)


def point(link: Path, bundle: Path) -> None:
    """`link` (a host's bundle path) made to name `bundle`, atomically: a host that reads its
    bundle path sees the old bundle or the new one, whole."""
    temp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    temp.symlink_to(os.path.relpath(bundle, link.parent))
    os.replace(temp, link)


def state_credentials(state: Path, organization: str, server: str) -> Credentials | None:
    """The host's certificate in the state directory's PKI (compiler/pki.py writes it at
    apply), or None before the organization has one."""
    folder = state / "pki" / organization
    credentials = Credentials(
        folder / "trust.pem", folder / "hosts" / f"{server}.pem", folder / "hosts" / f"{server}.key"
    )
    files = (credentials.trust, credentials.certificate, credentials.private_key)
    return credentials if all(f.exists() for f in files) else None


def applied_bundle(
    state: Path, organization: str, server: str, out: Path, addresses: AddressMap | None = None
) -> None:
    """The bundle of `server` of the state's current serial, with its certificate from the
    state's PKI, as the supervisor writes it: for a host run by hand (the benchmarks)."""
    serial = int(orjson.loads((state / "state.json").read_bytes())["serial"])
    tree = state / "artifacts" / str(serial)
    credentials = state_credentials(state, organization, server)
    zones = sorted(tree.glob("*/zones/*.zone"))
    write_bundle(tree / organization, server, out, serial, credentials, addresses, zones)
