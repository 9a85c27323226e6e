"""What the test modules share: paths, type aliases, waiting, outside tools and golden files.

`tests/` is a package, so a test module imports these (`from tests.helpers import ROOT`) instead
of defining them again. pytest imports the tests with `--import-mode=importlib` and never puts
the repository on sys.path, so `mailwright` is always the installed package, never the folders.

Golden files: `assert_golden` and `assert_golden_tree` compare produced output with a file
stored once under tests/golden (or beside a schema case); after a deliberate change, run the
tests with MAILWRIGHT_REGEN_GOLDEN=1 to rewrite the files, then review `git diff`.
"""

from __future__ import annotations

import difflib
import email.parser
import email.policy
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailwright.compiler.pki import OrganizationPki
from mailwright.runtime.bundle import Credentials, write_bundle
from mailwright.runtime.contract import UNPRIVILEGED_PORTS, read_servers
from mailwright.runtime.discovery import local_addresses, spec_peers
from mailwright.runtime.durable.files import write_atomic
from mailwright.runtime.tls import ClientTls, transfer_client_context, transfer_server_context

# --- paths ----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SEED_DIR = EXAMPLES / "seed"
SEED_FILES = ("dcnw.yaml", "minasi.yaml")
SEED_SPECS = [SEED_DIR / name for name in SEED_FILES]
CONTOSO = EXAMPLES / "multisite" / "contoso.yaml"
GOLDEN = ROOT / "tests" / "golden"
# Specs with the exact diagnostics `mailwright validate` prints for them (NAME.expected).
DIAGNOSTIC_CASES = ROOT / "tests" / "schema" / "fixtures" / "golden"
# The `mailwright` script of the environment that runs the tests.
MAILWRIGHT = str(Path(sys.executable).with_name("mailwright"))
EPOCH = "1767225600"  # SOURCE_DATE_EPOCH 2026-01-01: fixed zone serials
LOOPBACK = "127.0.0.1"

# --- what the fixtures of tests/conftest.py hand out ------------------------------------------

Process = subprocess.Popen[str]
Mailwright = Callable[..., subprocess.CompletedProcess[str]]
WaitUntil = Callable[[Callable[[], bool], float, str], None]
Endpoint = Callable[[Path, str, str], tuple[str, int]]
Messages = Callable[[Path, str, str], list[EmailMessage]]
RequireTool = Callable[[str], str]


# --- hosts from bundles ---------------------------------------------------------------------


def host_bundle(config: Path, state: Path, serial: int | None = None) -> tuple[Path, Path, str]:
    """The bundle of a compiled host config (`<tree>/<ORG>/hosts/<server>.json`), as the local
    supervisor makes it: an address map gives every host of the tree a loopback address of its
    own, in a block of 127.0.0.0/8 picked by the state directory's path (so that test runs side
    by side do not meet), its services on the unprivileged ports. (bundle, data folder, the
    host's address.) Its transfer credentials come from the organization's PKI in `state`, as
    `apply` issues them (made here for a tree that was only compiled)."""
    tree, organization, server = config.parents[2], config.parents[1].name, config.stem
    names = sorted(f"{h.parents[1].name}/{h.stem}" for h in tree.glob("*/hosts/*.json"))
    digest = hashlib.sha256(str(state.resolve()).encode()).digest()
    block = f"127.{10 + digest[0] % 200}.{digest[1]}"
    hosts = {name: f"{block}.{index}" for index, name in enumerate(names, 1)}
    addresses = local_addresses(spec_peers(tree, sorted(hosts)), hosts, UNPRIVILEGED_PORTS)
    bundle = state / "bundles" / organization / server
    zones = sorted(tree.glob("*/zones/*.zone"))
    for folder in sorted(tree.glob("*/servers.json")):
        issue_credentials(state, folder.parent)
    pki = OrganizationPki(state, organization)
    credentials = Credentials(pki.root / "trust.pem", *pki.host_paths(server))
    write_bundle(tree / organization, server, bundle, serial, credentials, addresses, zones)
    return bundle, state / "hosts" / server, hosts[f"{organization}/{server}"]


def issue_credentials(state: Path, organization: Path) -> None:
    """What `apply` issues in `<state>/pki/` for an organization (`organization`: its compiled
    folder): its CA, made on first use; a certificate for each of its servers; trust.pem."""
    pki = OrganizationPki(state, organization.name)
    pki.ensure()
    for server, peer in read_servers(organization / "servers.json").items():
        pki.host_credentials(server, peer.fqdn, peer.ipv4)
    write_atomic(pki.root / "trust.pem", pki.trust_bundle(), mode=0o644)


def transfer_tls(
    state: Path, organization: str, server: str, as_server: str | None = None
) -> ClientTls:
    """TLS to the transfer port of a host the tests started (host_bundle): the server verified
    against its organization's trust.pem for its fqdn; the client is `as_server`, with its
    certificate (XFER, MOVE), or a mail client without one (SUBMIT)."""
    pki = OrganizationPki(state, organization)
    [servers, *_] = sorted((state / "bundles" / organization).glob("*/servers.json"))
    fqdn = read_servers(servers)[server].fqdn
    certificate, key = pki.host_paths(as_server) if as_server else (None, None)
    context = transfer_client_context(pki.root / "trust.pem", certificate, key)
    return ClientTls(context, server_hostname=fqdn)


def transfer_server_tls(state: Path, organization: str, server: str) -> ssl.SSLContext:
    """The transfer port's side of `server` (host_bundle made its certificate), for a test
    that stands in for it."""
    pki = OrganizationPki(state, organization)
    return transfer_server_context(*pki.host_paths(server), pki.root / "trust.pem")


def bundle_applied(state: Path, organization: str, server: str) -> None:
    """A host's bundle made again of the state's current serial, as the supervisor does after
    an apply (then SIGHUP has the host read it)."""
    serial = int(json.loads((state / "state.json").read_text(encoding="utf-8"))["serial"])
    config = state / "artifacts" / str(serial) / organization / "hosts" / f"{server}.json"
    host_bundle(config, state, serial)


def host_command(config: Path, state: Path) -> list[str]:
    """`python -m mailwright.runtime.host` for a compiled host config, from its bundle."""
    bundle, data, address = host_bundle(config, state)
    command = [sys.executable, "-m", "mailwright.runtime.host", str(bundle), "--data", str(data)]
    command += ["--bind", address]
    for service, port in UNPRIVILEGED_PORTS.items():
        command += [f"--{service}-port", str(port)]
    return command


# --- running the CLI, waiting and parsing ---------------------------------------------------


def plain_environment() -> dict[str, str]:
    """The caller's environment without anything that would make rich print colours."""
    colours = {"FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}
    return {**{k: v for k, v in os.environ.items() if k not in colours}, "NO_COLOR": "1"}


def run_mailwright(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`mailwright ARGUMENTS` run in `cwd` without colours: exit code, stdout and stderr."""
    return subprocess.run(
        [MAILWRIGHT, *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=plain_environment(),
        timeout=120,
        check=False,
    )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def parse_message(data: bytes) -> EmailMessage:
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def require_tool(name: str, package: str = "") -> str:
    """The path of an outside tool; skip without it, fail if MAILWRIGHT_REQUIRE_TOOLS=1."""
    path = shutil.which(name)
    if path is None:
        hint = f" ({package})" if package else ""
        if os.environ.get("MAILWRIGHT_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{name} is not installed and MAILWRIGHT_REQUIRE_TOOLS=1{hint}")
        pytest.skip(f"{name} is not installed{hint}")
    return path


# --- golden files ---------------------------------------------------------------------------

# The one switch: MAILWRIGHT_REGEN_GOLDEN=1 rewrites every golden file the run compares.
REGENERATE_GOLDEN = os.environ.get("MAILWRIGHT_REGEN_GOLDEN") == "1"


def assert_golden(path: Path, produced: str | bytes, produced_by: str = "produced") -> None:
    """`produced` is byte for byte the golden file `path`; else fail with a unified diff."""
    data = produced.encode() if isinstance(produced, str) else produced
    if REGENERATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    expected = path.read_bytes()
    if data == expected:
        return
    diff = difflib.unified_diff(
        expected.decode(errors="replace").splitlines(keepends=True),
        data.decode(errors="replace").splitlines(keepends=True),
        _shown(path),
        produced_by,
    )
    pytest.fail(
        "output differs from the golden file:\n"
        + "".join(diff)
        + "\n(MAILWRIGHT_REGEN_GOLDEN=1 rewrites the golden files; review the diff)"
    )


def assert_golden_tree(
    folder: Path, produced: Mapping[str, str | bytes], produced_by: str = "produced"
) -> None:
    """Every file below `folder` is one of `produced` (relative path -> content) and the
    same; regenerating also removes the files nothing produces any more."""
    if REGENERATE_GOLDEN:
        for stale in set(tree(folder)) - set(produced):
            (folder / stale).unlink()
        for name, content in produced.items():
            assert_golden(folder / name, content)
    assert sorted(produced) == sorted(tree(folder))
    for name, content in sorted(produced.items()):
        assert_golden(folder / name, content, f"{produced_by}/{name}")


def tree(root: Path) -> dict[str, bytes]:
    """Every file below `root` by its relative path (as text with `/`), with its content."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
