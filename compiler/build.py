"""`compile`: validated organizations to artifacts on disk, deterministically.

DIR/<org>/ holds gal.json, gwart.json, gwart.txt, servers.json,
zones/*.zone, hosts/*.json and manifest.json; DIR/manifest.json lists the organizations
compiled together. Output is a pure function of the specs, and of the previous manifest for
zone serials (same records, same serial), so compiling twice gives byte-identical files.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson

from mailwright.compiler.gal import Gal, build_gal
from mailwright.compiler.gwart import Gwart, build_gwart
from mailwright.compiler.hosts import HostContext, host_config, peers
from mailwright.compiler.zones import render_zones
from mailwright.schema import LoadedSpec
from mailwright.schema.loader import gc_paused

MANIFEST_FORMAT_VERSION = 1


def to_json(data: Any) -> str:
    """Sorted keys, two-space indent, UTF-8: as json.dumps would, at orjson's speed."""
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_date() -> datetime.date:
    """Today, or the reproducible-builds SOURCE_DATE_EPOCH when set."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).date()
    return datetime.date.today()


@dataclass
class Artifacts:
    """One organization's artifacts: relative path -> file content."""

    organization: str
    files: dict[str, str] = field(default_factory=dict)
    zones: dict[str, dict[str, Any]] = field(default_factory=dict)


def compile_organization(
    loaded: LoadedSpec, previous: dict[str, tuple[str, int]], today: datetime.date
) -> Artifacts:
    gal: Gal = build_gal(loaded)
    gwart: Gwart = build_gwart(loaded)
    out = Artifacts(loaded.name)
    out.files["gal.json"] = gal.as_text()
    out.files["gwart.json"] = to_json(gwart.as_json())
    out.files["gwart.txt"] = gwart.as_text()
    out.files["servers.json"] = to_json({name: p.as_json() for name, p in peers(loaded).items()})
    for zone in render_zones(loaded, previous, today):
        out.files[f"zones/{zone.origin}.zone"] = zone.text
        out.zones[zone.origin] = {"content_hash": zone.content_hash, "serial": zone.serial}
    # Hosts name the shared artifacts they read; a change to those, or to a host's own config,
    # reloads the host, unless what it listens on changed (runtime/host/change.py).
    shared = [
        "gal.json",
        "gwart.json",
        "servers.json",
        *sorted(n for n in out.files if n.startswith("zones/")),
    ]
    context = HostContext(loaded, gal.homed_on(), shared)
    for site in loaded.spec.sites:
        for server in site.servers:
            config = host_config(context, site, server)
            out.files[f"hosts/{server.name}.json"] = to_json(config.as_json())
    out.files["manifest.json"] = to_json(_manifest(loaded, out))
    return out


def _manifest(loaded: LoadedSpec, out: Artifacts) -> dict[str, Any]:
    sources = [loaded.path, *(loaded.path.parent / d.path for d in loaded.spec.directory_import)]
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "mailwright": version("mailwright"),
        "organization": loaded.name,
        "sources": {str(p): sha256(p.read_bytes()) for p in sources},
        "artifacts": {name: sha256(text.encode()) for name, text in sorted(out.files.items())},
        "zones": out.zones,
    }


def previous_serials(org_dir: Path) -> dict[str, tuple[str, int]]:
    try:
        manifest = json.loads((org_dir / "manifest.json").read_text(encoding="utf-8"))
        zones = manifest["zones"]
        return {origin: (z["content_hash"], int(z["serial"])) for origin, z in zones.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def compile_all(
    specs: Sequence[LoadedSpec],
    previous: Callable[[str], dict[str, tuple[str, int]]],
    today: datetime.date,
) -> list[Artifacts]:
    """Organizations compiled together; `previous(org)` gives the zone serials last compiled."""
    with gc_paused():
        return [compile_organization(s, previous(s.name), today) for s in specs]


def tree_files(compiled: Sequence[Artifacts]) -> dict[str, str]:
    """The whole output tree: `<org>/<artifact>` -> text, and the shared manifest.json."""
    files = {f"{a.organization}/{name}": text for a in compiled for name, text in a.files.items()}
    network = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "organizations": {
            a.organization: sha256(a.files["manifest.json"].encode()) for a in compiled
        },
    }
    files["manifest.json"] = to_json(network)
    return files


def compile_specs(specs: Sequence[LoadedSpec], out_dir: Path) -> list[Artifacts]:
    """Compile organizations together and write their artifacts under `out_dir`."""
    compiled = compile_all(specs, lambda org: previous_serials(out_dir / org), build_date())
    for artifacts in compiled:
        _write_tree(out_dir / artifacts.organization, artifacts.files)
    _write_tree(out_dir, {"manifest.json": tree_files(compiled)["manifest.json"]})
    return compiled


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")
    _remove_stale(root, set(files))


def _remove_stale(root: Path, keep: set[str]) -> None:
    """A host or zone removed from the spec leaves no artifact behind."""
    for folder in ("hosts", "zones"):
        for path in (root / folder).glob("*") if (root / folder).is_dir() else ():
            if f"{folder}/{path.name}" not in keep:
                path.unlink()
