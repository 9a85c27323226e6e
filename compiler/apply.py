"""Planning against the state directory, saved plans, and applying them.

A saved plan holds the compiled tree it would apply, bound to the state's lineage and serial
and to the spec files' hashes, with a checksum: `apply PLANFILE` applies exactly that, refuses
it once the state moved on (so a plan made on an empty state applies once), and refuses an
altered file.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailwright.compiler.build import build_date, compile_all, tree_files
from mailwright.compiler.pki import OrganizationPki, PkiError
from mailwright.compiler.plan import Action, Plan, make_plan
from mailwright.compiler.state import (
    State,
    StateDir,
    StateError,
    fingerprints,
    write_tree_durably,
)
from mailwright.runtime.contract import ContractError, read_servers
from mailwright.runtime.durable.files import write_atomic
from mailwright.runtime.targets import LaunchError, Progress, Target
from mailwright.runtime.targets.local import LocalTarget
from mailwright.schema import LoadedSpec

PLANFILE_FORMAT_VERSION = 1
# How a long step reports: (step, done, in all or None when not known). The CLI shows it.
StepProgress = Callable[[str, int, int | None], None]
# Hosts get 127.0.1.1, 127.0.1.2, ...: inside 127.0.0.0/8 and clear of 127.0.0.1 itself.
FIRST_HOST_ADDRESS = ipaddress.IPv4Address("127.0.1.1")


class ApplyError(StateError):
    """Applying failed and was rolled back."""


class PlanFileError(StateError):
    """A saved plan that must not be applied: altered, stale, or not a plan."""


@dataclass
class PreparedPlan:
    """A plan with what applying it needs: the compiled tree and what it was planned against."""

    plan: Plan
    files: dict[str, str]
    lineage: str
    state_serial: int
    spec_hashes: dict[str, str]


def prepare(
    specs: Sequence[LoadedSpec], state_dir: StateDir, progress: StepProgress | None = None
) -> PreparedPlan:
    state = state_dir.read()
    _report(progress, "Compiling")
    compiled = compile_all(specs, state.zone_serials, build_date())
    files = tree_files(compiled)
    _report(progress, "Planning")
    return _prepared(state_dir, state, files, _spec_hashes(compiled, files))


def _report(progress: StepProgress | None, step: str) -> None:
    """A step begins whose share done is not known."""
    if progress is not None:
        progress(step, 0, None)


def _counted(progress: StepProgress | None, step: str) -> Progress | None:
    """A step that counts what it has done, as write_tree_durably and launch do."""
    if progress is None:
        return None
    return lambda done, total: progress(step, done, total)


def _prepared(
    state_dir: StateDir, state: State, files: dict[str, str], hashes: dict[str, str]
) -> PreparedPlan:
    plan = make_plan(state_dir.applied_files(state, files), state.applied, files)
    plan.moves = _moves(plan, state_dir)
    return PreparedPlan(plan, files, state.lineage, state.serial, hashes)


def _moving(plan: Plan) -> Iterator[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """(address, before, after) of every mailbox whose mail moves: renamed or homed elsewhere."""
    for change in plan.changes:
        if change.action is Action.UPDATE and change.resource.kind == "mailbox":
            assert change.before is not None and change.after is not None
            old, new = change.before.attributes, change.after.attributes
            if (old["home_server"], old["alias"]) != (new["home_server"], new["alias"]):
                yield change.address, old, new


def moving_stores(plan: Plan) -> list[tuple[str, str]]:
    """(old home, old alias) of every mailbox whose mail moves."""
    return [(old["home_server"], old["alias"]) for _, old, _ in _moving(plan)]


def _moves(plan: Plan, state_dir: StateDir) -> dict[str, tuple[int, int]]:
    """The messages and bytes each home server change moves, as the old home's store holds
    them now (nothing where that store is not on this machine)."""
    moves = {}
    for address, old, new in _moving(plan):
        if old["home_server"] != new["home_server"]:
            maildir = state_dir.store(old["home_server"], old["alias"]) / "Maildir"
            files = [p for sub in ("new", "cur") for p in _files(maildir / sub)]
            moves[address] = (len(files), sum(p.stat().st_size for p in files))
    return moves


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def _spec_hashes(compiled: Sequence[Any], files: dict[str, str]) -> dict[str, str]:
    hashes: dict[str, str] = {}
    for artifacts in compiled:
        manifest = json.loads(files[f"{artifacts.organization}/manifest.json"])
        hashes.update(manifest["sources"])
    return hashes


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_plan(prepared: PreparedPlan, path: Path) -> None:
    body = {
        "format_version": PLANFILE_FORMAT_VERSION,
        "lineage": prepared.lineage,
        "state_serial": prepared.state_serial,
        "spec_hashes": prepared.spec_hashes,
        "files": prepared.files,
    }
    # The file holds host configs, password hashes included: readable by its owner only.
    text = json.dumps({**body, "checksum": _checksum(body)}, sort_keys=True)
    if not path.parent.is_dir():
        raise FileNotFoundError(2, "no such directory", str(path.parent))
    write_atomic(path, text.encode(), mode=0o600)


def load_plan(path: Path, state_dir: StateDir) -> PreparedPlan:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        checksum = document.pop("checksum")
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise PlanFileError(f"{path} is not a mailwright plan file: {exc}") from None
    if checksum != _checksum(document):
        raise PlanFileError(
            f"{path} was altered after it was saved (checksum mismatch); make a new plan"
        )
    if document.get("format_version") != PLANFILE_FORMAT_VERSION:
        raise PlanFileError(
            f"{path} has plan format {document.get('format_version')}, "
            f"not {PLANFILE_FORMAT_VERSION}"
        )
    state = state_dir.read()
    if document["lineage"] != state.lineage and document["state_serial"] and state.serial:
        # Terraform's lineage: a plan of one state never applies to another.
        raise PlanFileError(
            f"{path} was planned against another state (lineage {document['lineage']}); "
            f"{state_dir.path} has lineage {state.lineage}; make a new plan for it"
        )
    if (document["lineage"], document["state_serial"]) != (state.lineage, state.serial) and not (
        document["state_serial"] == 0 == state.serial
    ):
        raise PlanFileError(
            f"{path} is stale: it was planned against state serial {document['state_serial']}, "
            f"and the state is now at serial {state.serial}; make a new plan"
        )
    return _prepared(state_dir, state, document["files"], document["spec_hashes"])


def apply(
    prepared: PreparedPlan,
    state_dir: StateDir,
    progress: StepProgress | None = None,
    runtime: Target | None = None,
    rotate_ca: bool = False,
) -> State:
    """Write the artifacts and the new state (caller holds the lock and checked safety), and
    hand the plan's runtime actions to the target (the local supervisor unless told).

    Before the runtime is told, every organization of the new tree has its PKI in the state
    directory (compiler/pki.py, `<state>/pki/<ORG>/`): a CA made at its first apply, a
    certificate for each server's fqdn and ipv4, and `trust.pem`, the CAs its hosts accept.
    The bundles of this serial carry them (runtime/bundle.py state_credentials); nothing of
    it is in the plan or the compiled tree, and no message names more than a path.

    `rotate_ca`: each applied organization gets a new CA and its hosts new certificates from
    it, in this serial. No mail is dropped: pki keeps the previous CA in `trust.pem` until the
    next rotation, so this serial's bundles trust both CAs and the local runtime reloads them
    all (SIGHUP). Between the moment one host takes the serial in and the moment its peer
    does, the peer still trusts the old CA only and refuses the new certificate; the hand-off
    fails as temporary (transfer.py), the message stays in the sender's durable queue and goes
    on its next try, once the peer runs the serial. Certificates of either CA verify
    everywhere from then until the next rotation, so run the next one only after every host
    took this serial in."""
    runtime = runtime or LocalTarget(state_dir.path)
    state = state_dir.read()
    if (state.lineage, state.serial) != (prepared.lineage, prepared.state_serial) and not (
        prepared.state_serial == 0 == state.serial
    ):
        raise PlanFileError("the state changed while planning; make a new plan")
    new = State(
        serial=state.serial + 1,
        lineage=state.lineage,
        applied={
            name.split("/", 1)[0]: json.loads(text)
            for name, text in prepared.files.items()
            if name.endswith("/manifest.json")
        },
        host_addresses=_host_addresses(state.host_addresses, prepared.files),
    )
    target = state_dir.artifacts(new.serial).resolve()
    if target.exists():
        shutil.rmtree(target)  # leftovers of an apply that crashed before naming them
    write_tree_durably(target, prepared.files, _counted(progress, "Writing artifacts"))
    new.fingerprints = fingerprints(target, prepared.files)
    try:
        _issue_credentials(state_dir.path, target, prepared.files, rotate_ca)
    except (PkiError, ContractError, OSError, ValueError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        # PkiError and ContractError name paths only; an OSError its path and strerror.
        raise ApplyError(f"cannot issue the organizations' certificates: {exc}") from None
    _retain_removed_stores(prepared.plan, state_dir, new.serial)
    state_dir.write(new)
    try:
        runtime.launch(
            target,
            new.serial,
            prepared.plan.runtime_actions,
            _counted(progress, "Starting hosts"),
        )
    except LaunchError as exc:
        _roll_back(state_dir, state, target, runtime)
        raise ApplyError(f"{exc}; rolled back to state serial {state.serial}") from None
    old = state_dir.artifacts(state.serial)
    if state.serial and old.exists():
        shutil.rmtree(old)
    return new


def _issue_credentials(state: Path, tree: Path, files: Mapping[str, str], rotate_ca: bool) -> None:
    """Every organization of the tree: its CA, a certificate for each of its servers (fqdn and
    ipv4, from the compiled servers.json) and `trust.pem`, before any host is given them."""
    organizations = sorted({name.split("/")[0] for name in files if name.endswith("/servers.json")})
    for organization in organizations:
        pki = OrganizationPki(state, organization)
        if rotate_ca:
            pki.rotate_ca()
        else:
            pki.ensure()
        for server, peer in sorted(read_servers(tree / organization / "servers.json").items()):
            pki.host_credentials(server, peer.fqdn, peer.ipv4)
        # RFC 5280 §6.1: a peer's chain verifies against any CA in here, old or new.
        write_atomic(pki.root / "trust.pem", pki.trust_bundle(), mode=0o644)
        pki.forget_retired()


def _roll_back(state_dir: StateDir, previous: State, target: Path, runtime: Target) -> None:
    """The previous state stays current and the previous runtime keeps (or goes back to)
    running; the new artifacts are removed."""
    if previous.serial:
        state_dir.write(previous)
        with contextlib.suppress(LaunchError):
            runtime.launch(state_dir.artifacts(previous.serial), previous.serial, [])
    else:
        state_dir.state_file.unlink(missing_ok=True)
        runtime.down()
    shutil.rmtree(target, ignore_errors=True)


def _host_addresses(previous: dict[str, str], files: dict[str, str]) -> dict[str, str]:
    """Each host keeps its loopback address across applies; new hosts take the next free one."""
    hosts = sorted(
        f"{name.split('/', 1)[0]}/{name.rsplit('/', 1)[1].removesuffix('.json')}"
        for name in files
        if "/hosts/" in name
    )
    kept = {h: a for h, a in previous.items() if h in hosts}
    used = {ipaddress.IPv4Address(a) for a in kept.values()}
    candidate = FIRST_HOST_ADDRESS
    for host in hosts:
        if host not in kept:
            while candidate in used:
                candidate += 1
            kept[host] = str(candidate)
            used.add(candidate)
    return dict(sorted(kept.items()))


def _retain_removed_stores(plan: Plan, state_dir: StateDir, serial: int) -> None:
    """Removing a mailbox from the spec never deletes mail: its store moves to retained/."""
    for change in plan.changes:
        if change.action is Action.DELETE and change.resource.kind == "mailbox":
            attributes = change.resource.attributes
            store = state_dir.store(attributes["home_server"], attributes["alias"])
            if store.exists():
                destination = (
                    state_dir.retained
                    / change.resource.organization
                    / f"{attributes['alias']}.{serial}"
                )
                destination.parent.mkdir(parents=True, exist_ok=True)
                store.rename(destination)


def purge(state_dir: StateDir, names: Sequence[str]) -> list[Path]:
    """Delete retained stores for good: all, or those named ALIAS, ORG/ALIAS or
    ORG/ALIAS.SERIAL (as `retained/` lists them)."""
    retained = sorted(state_dir.retained.glob("*/*")) if state_dir.retained.is_dir() else []
    labels = {path: _labels(path) for path in retained}
    if unknown := [n for n in names if not any(n in found for found in labels.values())]:
        known = ", ".join(f"{p.parent.name}/{p.name}" for p in retained) or "none"
        raise StateError(
            f"nothing retained is called {', '.join(unknown)} (retained: {known}); nothing purged"
        )
    removed = [path for path in retained if not names or labels[path] & set(names)]
    for path in removed:
        shutil.rmtree(path)
    return removed


def retained(state_dir: StateDir) -> list[tuple[Path, int]]:
    """Every retained store (`retained/ORG/ALIAS.SERIAL`) with the messages it holds."""
    stores = sorted(state_dir.retained.glob("*/*")) if state_dir.retained.is_dir() else []
    return [(path, _messages(path)) for path in stores]


def _messages(store: Path) -> int:
    return sum(1 for sub in ("new", "cur") for _ in (store / "Maildir" / sub).glob("*"))


def _labels(path: Path) -> set[str]:
    """What names a retained store `retained/ORG/ALIAS.SERIAL`."""
    alias = path.name.rpartition(".")[0]
    return {alias, f"{path.parent.name}/{alias}", f"{path.parent.name}/{path.name}"}
