"""`plan` and `apply` against a state directory (issue 4), through the real CLI on real files.

Exit codes, the plan in every output format, secrets kept out of all of them, saved plans
(replayed, stale, altered), the confirmation guard, concurrent applies, a crash injected
between writes, drift, the blast-radius refusal, retained stores, the launcher seam and the
hosts' loopback addresses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pty
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailwright.compiler import apply as apply_module
from mailwright.compiler.apply import apply, prepare
from mailwright.compiler.plan import Action, Resource, ResourceChange, unsafe_findings
from mailwright.compiler.state import Progress, State, StateDir, write_tree_durably
from mailwright.schema import load_specs
from tests.helpers import EPOCH, MAILWRIGHT, SEED_DIR, SEED_FILES

HASHES = sorted(
    set(re.findall(r"\$argon2id\$\S+", "".join((SEED_DIR / s).read_text() for s in SEED_FILES)))
)
SUMMARY = re.compile(r"^Plan: (\d+) to add, (\d+) to change, (\d+) to destroy\.$", re.MULTILINE)

# Another apply's lock is waited for, up to a minute.
WAIT_AND_APPROVE = ("--auto-approve", "--lock-timeout", "60")
# Holds the state lock until a line arrives on stdin, as a second apply would.
LOCK_HOLDER = """
import sys
from pathlib import Path
from mailwright.compiler.state import StateDir

with StateDir(Path(sys.argv[1])).locked():
    print("locked", flush=True)
    sys.stdin.readline()
"""


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILWRIGHT_STATE"}
    return {**env, "SOURCE_DATE_EPOCH": EPOCH, **(extra or {})}


@dataclass(frozen=True)
class Workspace:
    """Specs and a state directory ("state") in one folder; the CLI runs inside it."""

    root: Path
    specs: tuple[str, ...] = SEED_FILES

    @property
    def state(self) -> Path:
        return self.root / "state"

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [MAILWRIGHT, *args],
            cwd=self.root,
            env=environment(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def spawn(self, *args: str, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
        """`mailwright ARGS` started in the workspace, its output piped; the caller waits."""
        return subprocess.Popen(
            [MAILWRIGHT, *args],
            cwd=self.root,
            env=environment(),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def plan(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("plan", *self.specs, "--state", "state", *args)

    def plans(self, *variants: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
        """Several read-only `plan` runs at once (each variant: its extra arguments)."""
        running = [self.spawn("plan", *self.specs, "--state", "state", *a) for a in variants]
        results = []
        for process in running:
            with process:
                stdout, stderr = process.communicate(timeout=120)
            results.append(
                subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            )
        return results

    def apply(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("apply", *self.specs, "--state", "state", *args)

    def edit(self, spec: str, old: str, new: str) -> None:
        path = self.root / spec
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{old!r} not once in {spec}"
        path.write_text(text.replace(old, new), encoding="utf-8")

    def drop_mailbox(self, spec: str, alias: str) -> None:
        path = self.root / spec
        text, found = re.subn(
            rf"^  - alias: {alias}\n(?:    .*\n)*", "", path.read_text(), flags=re.MULTILINE
        )
        assert found == 1, f"no mailbox {alias} in {spec}"
        path.write_text(text)

    def state_json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "state.json").read_text())
        return data

    def serial(self) -> int:
        return StateDir(self.state).read().serial

    def actions(self) -> list[dict[str, Any]]:
        log = self.state / "runtime" / "actions.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()]


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def counts(text: str) -> tuple[int, int, int]:
    found = SUMMARY.findall(text)
    assert len(found) == 1, text
    add, change, destroy = found[0]
    return int(add), int(change), int(destroy)


def acme_spec(aliases: Sequence[str], nameservers: str = "[mail]") -> str:
    """An organization with one all-in-one server and the given mailboxes (one shared hash)."""
    mailboxes = "".join(
        f"  - alias: {alias}\n"
        f"    given_name: {alias.title()}\n"
        "    surname: Example\n"
        "    home_server: mail\n"
        f"    password: {HASHES[0]}\n"
        for alias in aliases
    )
    return f"""\
organization:
  name: Acme
  domains: [acme.example]
sites:
  - name: HQ
    servers:
      - name: mail
        fqdn: mail.acme.example
        ipv4: 10.9.0.10
        roles: [store, ims, dns]
        ims:
          address_spaces:
            - {{type: SMTP, pattern: "*", cost: 1}}
mailboxes:
{mailboxes}
dns:
  - domain: acme.example
    nameservers: {nameservers}
"""


ACME_ALIASES = tuple(f"user{n:02}" for n in range(1, 13))


def fresh_workspace(root: Path) -> Workspace:
    root.mkdir(parents=True)
    for spec in SEED_FILES:
        shutil.copy(SEED_DIR / spec, root / spec)
    return Workspace(root)


@pytest.fixture(scope="module")
def applied_seed(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The seed organizations applied once (serial 1); tests work on copies."""
    workspace = fresh_workspace(tmp_path_factory.mktemp("seed") / "ws")
    ok(workspace.apply("--auto-approve"))
    return workspace


@pytest.fixture(scope="module")
def applied_acme(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Twelve mailboxes applied once: enough for the blast-radius ratio to count."""
    root = tmp_path_factory.mktemp("acme") / "ws"
    root.mkdir()
    (root / "acme.yaml").write_text(acme_spec(ACME_ALIASES))
    workspace = Workspace(root, ("acme.yaml",))
    ok(workspace.apply("--auto-approve"))
    return workspace


@pytest.fixture
def fresh(tmp_path: Path) -> Workspace:
    return fresh_workspace(tmp_path / "ws")


@pytest.fixture
def seed(tmp_path: Path, applied_seed: Workspace) -> Workspace:
    shutil.copytree(applied_seed.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


@pytest.fixture
def acme(tmp_path: Path, applied_acme: Workspace) -> Workspace:
    shutil.copytree(applied_acme.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws", applied_acme.specs)


@pytest.fixture
def in_workspace(seed: Workspace, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workspace]:
    """The copied seed workspace as the working directory, for in-process plan/apply."""
    monkeypatch.chdir(seed.root)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    yield seed


# --- exit codes ------------------------------------------------------------------------------


def test_plan_exit_codes_on_an_empty_state(fresh: Workspace) -> None:
    plain, detailed, expecting = fresh.plans([], ["--detailed-exitcode"], ["--expect-no-changes"])
    text = ok(plain)
    add, change, destroy = counts(text)
    assert add > 0
    assert (change, destroy) == (0, 0)
    assert "+ mailbox Minasi/mark" in text
    ok(detailed, 2)
    ok(expecting, 2)
    assert not fresh.state.exists()  # planning writes nothing


def test_plan_exit_codes_once_applied(seed: Workspace) -> None:
    detailed, expecting = seed.plans(["--detailed-exitcode"], ["--expect-no-changes"])
    assert ok(detailed).strip() == "No changes. The applied organization matches the specs."
    ok(expecting)


def test_detailed_exitcode_is_1_on_a_bad_spec(seed: Workspace) -> None:
    seed.edit("minasi.yaml", "surname: Minasi\n", "surname: Minasi\n    favourite_colour: blue\n")
    stderr = refused(seed.plan("--detailed-exitcode"))
    assert re.search(r"minasi\.yaml:\d+:\d+: error", stderr), stderr


# --- the plan in every format ----------------------------------------------------------------


def test_plan_shows_a_mailbox_change_in_every_format(seed: Workspace) -> None:
    seed.edit("minasi.yaml", "pop3: {enabled: false}", "pop3: {enabled: true}")

    plain, summarized, as_json, as_markdown, expecting = seed.plans(
        [], ["--summary"], ["--json"], ["--format", "markdown"], ["--expect-no-changes"]
    )
    text = ok(plain)
    assert "  ~ mailbox Minasi/paula\n      pop3.enabled: false → true\n" in text
    assert counts(text) == (0, 2, 0)
    assert text.rstrip().endswith("Plan: 0 to add, 2 to change, 0 to destroy.")
    assert "zone" not in text  # no zone changed, so no new serial
    # A mailbox's settings reach the running host by reload: its sessions stay open.
    assert "  reload Minasi/arlington (mailboxes, gal.json changed)" in text

    summary = ok(summarized)
    assert summary.splitlines() == ["~ mailbox Minasi/paula", "~ host Minasi/arlington"]

    document = json.loads(ok(as_json))
    assert document["format_version"]
    by_address = {c["address"]: c for c in document["resource_changes"]}
    assert set(by_address) == {"mailbox Minasi/paula", "host Minasi/arlington"}
    paula = by_address["mailbox Minasi/paula"]
    assert paula["kind"] == "mailbox"
    assert paula["actions"] == ["update"]
    assert paula["before"]["pop3.enabled"] is False
    assert paula["after"]["pop3.enabled"] is True
    assert paula["before"]["password"] == paula["after"]["password"] == "(sensitive)"
    assert document["runtime_actions"] == [
        {"host": "Minasi/arlington", "action": "reload", "reason": "mailboxes, gal.json changed"}
    ]
    assert document["summary"] == {"add": 0, "change": 2, "destroy": 0}

    markdown = ok(as_markdown)
    assert markdown.startswith("### mailwright plan\n")
    assert "**Plan: 0 to add, 2 to change, 0 to destroy.**" in markdown
    assert "~ mailbox Minasi/paula\n      pop3.enabled: false → true\n" in markdown
    assert "| Minasi/arlington | reload | mailboxes, gal.json changed |" in markdown

    ok(expecting, 2)


def test_a_changed_surname_is_an_update_of_the_mailbox_and_warns_of_the_lost_address(
    seed: Workspace,
) -> None:
    # A surname is part of the X.400 address: the mailbox keeps its identity (DCNW/pat), its
    # address changes, and mail to the old one will be refused.
    seed.edit("dcnw.yaml", "surname: Quinn", "surname: Quincy")
    text = ok(seed.plan("--detailed-exitcode"), 2)
    old, new = (f"c=US;a= ;p=DCNW;o=Headquarters;s={s};g=Pat;" for s in ("Quinn", "Quincy"))
    assert f'  ~ mailbox DCNW/pat\n      address.X400: "{old}" → "{new}"\n' in text
    assert '      display_name: "Pat Quinn" → "Pat Quincy"\n' in text
    assert counts(text) == (0, 2, 0)
    assert (
        f"Warning: mailbox DCNW/pat: mail to X400:{old} will be refused from now on; to keep "
        f"it, list 'x400:{old}' in the mailbox's proxy_addresses.\n"
    ) in text
    warnings = json.loads(ok(seed.plan("--json")))["warnings"]
    assert warnings == [
        f"mailbox DCNW/pat: mail to X400:{old} will be refused from now on; to keep it, list "
        f"'x400:{old}' in the mailbox's proxy_addresses"
    ]


def test_a_declared_alias_rename_is_one_update_and_keeps_the_old_addresses(
    seed: Workspace,
) -> None:
    seed.edit("dcnw.yaml", "  - alias: jane\n", "  - alias: janet\n    previous_aliases: [jane]\n")
    text = ok(seed.plan("--detailed-exitcode"), 2)
    assert "  ~ mailbox DCNW/janet (renamed from DCNW/jane)\n" in text
    assert '      alias: "jane" → "janet"\n' in text
    assert '      address.SMTP: "jane@dcnw.com" → "janet@dcnw.com"\n' in text
    assert "Warning" not in text  # jane@dcnw.com stays hers, as a secondary address
    assert counts(text) == (0, 2, 0)  # the mailbox and its home's host config
    [change] = [
        c for c in json.loads(ok(seed.plan("--json")))["resource_changes"] if c["kind"] == "mailbox"
    ]
    assert (change["address"], change["previous_address"]) == (
        "mailbox DCNW/janet",
        "mailbox DCNW/jane",
    )
    assert "smtp:jane@dcnw.com" in change["after"]["secondary_addresses"]


def test_an_undeclared_alias_rename_is_a_removal_and_a_creation(seed: Workspace) -> None:
    seed.edit("dcnw.yaml", "  - alias: jane\n", "  - alias: janet\n")
    text = ok(seed.plan("--detailed-exitcode"), 2)
    assert (
        "  - mailbox DCNW/jane (its mail goes to retained/ until `mailwright purge DCNW/jane`)\n"
        in text
    )
    assert "  + mailbox DCNW/janet\n" in text


# --- secrets ---------------------------------------------------------------------------------


def assert_no_secrets(*outputs: str) -> None:
    assert HASHES
    for output in outputs:
        for secret in HASHES:
            assert secret not in output
            assert secret.rsplit("$", 1)[1] not in output  # not even the digest alone
            assert secret.split("$")[4] not in output  # nor the salt


def password_of(spec: str, alias: str) -> str:
    found = re.search(rf"alias: {alias}\n(?:    .*\n)*?    password: (\S+)", spec)
    assert found, alias
    return found.group(1)


def test_password_hashes_are_never_printed(fresh: Workspace) -> None:
    formats: list[list[str]] = [[], ["--json"], ["--format", "markdown"], ["--summary"]]
    outputs = [*fresh.plans(*formats), fresh.apply("--auto-approve")]
    assert "(sensitive)" in outputs[0].stdout
    # Paula takes Mark's password: a change that shows, masked, on both sides.
    minasi = (fresh.root / "minasi.yaml").read_text()
    fresh.edit("minasi.yaml", password_of(minasi, "paula"), password_of(minasi, "mark"))
    changed = fresh.plans(*formats)
    assert '  ~ mailbox Minasi/paula\n      password: "(sensitive)" → "(sensitive)"\n' in (
        changed[0].stdout
    )
    paula = next(
        c
        for c in json.loads(changed[1].stdout)["resource_changes"]
        if c["address"] == "mailbox Minasi/paula"
    )
    assert paula["before"]["password"] == paula["after"]["password"] == "(sensitive)"
    assert paula["sensitive"] == ["password"]
    outputs += [*changed, fresh.apply("--auto-approve")]
    for result in outputs:
        assert result.returncode == 0, result.stderr
    assert_no_secrets(*(r.stdout + r.stderr for r in outputs))


# --- saved plans -----------------------------------------------------------------------------


def test_a_plan_made_on_an_empty_state_applies_once(fresh: Workspace) -> None:
    result = fresh.plan("--out", "initial.plan")
    add, _, _ = counts(ok(result))
    assert "initial.plan" in result.stderr
    # The saved plan holds host configs, hashes included: readable by its owner only.
    assert (fresh.root / "initial.plan").stat().st_mode & 0o777 == 0o600
    applied = ok(fresh.run("apply", "initial.plan", "--state", "state"))  # no prompt
    assert f"Apply complete! Resources: {add} added, 0 changed, 0 destroyed." in applied
    assert fresh.serial() == 1

    stderr = refused(fresh.run("apply", "initial.plan", "--state", "state"))
    assert "stale" in stderr
    assert "serial 0" in stderr and "serial 1" in stderr
    assert fresh.serial() == 1


def test_an_altered_plan_file_is_refused(fresh: Workspace) -> None:
    ok(fresh.plan("--out", "change.plan"))
    saved = fresh.root / "change.plan"
    text = saved.read_text()
    document = json.loads(text)
    # One byte of one artifact inside the plan, the JSON still valid.
    assert "Headquarters" in document["files"]["DCNW/gwart.txt"]
    tampered = text.replace("Headquarters", "Headquarterz", 1)
    assert len(tampered) == len(text)
    assert json.loads(tampered)["files"] != document["files"]
    saved.write_text(tampered)

    stderr = refused(fresh.run("apply", "change.plan", "--state", "state"))
    assert "altered" in stderr and "checksum" in stderr
    assert not (fresh.state / "state.json").exists()
    assert not (fresh.state / "artifacts").exists()

    # Not a saved plan by its content: read as the spec it then is, and refused at its place.
    (fresh.root / "notes.txt").write_text("not a plan\n")
    assert "notes.txt:1:1: error: expected a mapping of keys to values" in refused(
        fresh.run("apply", "notes.txt", "--state", "state")
    )


def test_a_plan_made_before_another_apply_is_stale(seed: Workspace) -> None:
    seed.edit("minasi.yaml", "pop3: {enabled: false}", "pop3: {enabled: true}")
    ok(seed.plan("--out", "paula.plan"))
    seed.edit("dcnw.yaml", "surname: Quinn", "surname: Quincy")
    ok(seed.apply("--auto-approve"))
    assert seed.serial() == 2

    stderr = refused(seed.run("apply", "paula.plan", "--state", "state"))
    assert "stale" in stderr and "serial 1" in stderr and "serial 2" in stderr
    assert seed.serial() == 2


# --- apply: confirmation and idempotence -----------------------------------------------------


def test_apply_without_a_terminal_needs_auto_approve(fresh: Workspace) -> None:
    env = {"MAILWRIGHT_STATE": str(fresh.state)}
    stderr = refused(fresh.run("apply", *fresh.specs, env=env))
    assert "no terminal" in stderr and "--auto-approve" in stderr
    assert not (fresh.state / "state.json").exists()
    assert not (fresh.state / "artifacts").exists()
    assert not (fresh.state / "lock").exists()

    applied = ok(fresh.run("apply", *fresh.specs, "--auto-approve", env=env))
    assert "Apply complete!" in applied and "State serial 1." in applied
    assert fresh.serial() == 1

    again = ok(fresh.run("apply", *fresh.specs, "--auto-approve", env=env))
    assert "No changes" in again
    assert "Apply complete" not in again
    assert fresh.serial() == 1
    assert sorted(p.name for p in (fresh.state / "artifacts").iterdir()) == ["1"]


def test_apply_on_a_terminal_asks_first(fresh: Workspace) -> None:
    for answer, code in (("no", 1), ("yes", 0)):
        primary, secondary = pty.openpty()
        try:
            with fresh.spawn(
                "apply", *fresh.specs, "--state", "state", stdin=secondary
            ) as applying:
                os.write(primary, f"{answer}\n".encode())
                stdout, stderr = applying.communicate(timeout=60)
        finally:
            os.close(primary)
            os.close(secondary)
        assert applying.returncode == code, stderr
        assert "+ mailbox Minasi/mark" in stdout  # the plan is shown before the question
        assert "Only 'yes' will be accepted" in stdout
        if answer == "no":
            assert "Apply cancelled." in stderr
            assert not (fresh.state / "state.json").exists()
    assert fresh.serial() == 1


# --- the lock --------------------------------------------------------------------------------


def test_a_second_apply_fails_naming_the_holder_or_waits(fresh: Workspace) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(fresh.state)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline() == "locked\n"
            stderr = refused(fresh.apply("--auto-approve"))
            assert f"locked by pid {holder.pid} on {socket.gethostname()} since" in stderr
            assert "force-unlock" in stderr
            assert not (fresh.state / "state.json").exists()

            with fresh.spawn(
                "apply", *fresh.specs, "--state", "state", *WAIT_AND_APPROVE
            ) as waiter:
                time.sleep(1.5)
                assert waiter.poll() is None  # still waiting for the lock
                holder.stdin.write("\n")
                holder.stdin.flush()
                stdout, stderr = waiter.communicate(timeout=60)
                assert waiter.returncode == 0, stderr
                assert "State serial 1." in stdout
        finally:
            if holder.poll() is None:
                holder.kill()
    assert fresh.serial() == 1


def test_two_concurrent_applies_apply_once(fresh: Workspace) -> None:
    runs = [
        fresh.spawn("apply", *fresh.specs, "--state", "state", *WAIT_AND_APPROVE) for _ in range(2)
    ]
    outputs = []
    for run in runs:
        with run:
            stdout, stderr = run.communicate(timeout=60)
            assert run.returncode == 0, stderr
            outputs.append(stdout)
    assert sum("Apply complete!" in o for o in outputs) == 1
    assert sum("No changes" in o for o in outputs) == 1
    assert fresh.serial() == 1
    assert [a["action"] for a in fresh.actions()] == ["start"] * 4


def test_force_unlock_clears_a_stale_lock(seed: Workspace) -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        gone.wait()
    stale = {"pid": gone.pid, "host": socket.gethostname(), "since": "2026-01-01T00:00:00+00:00"}
    (seed.state / "lock").write_text(json.dumps(stale))
    seed.edit("minasi.yaml", "pop3: {enabled: false}", "pop3: {enabled: true}")

    assert f"left by pid {gone.pid}, which is no longer running" in refused(
        seed.apply("--auto-approve")
    )
    assert seed.serial() == 1

    removed = ok(seed.run("force-unlock", "--state", "state"))
    assert f"Removed the lock of pid {gone.pid}" in removed
    assert not (seed.state / "lock").exists()
    ok(seed.apply("--auto-approve"))
    assert seed.serial() == 2


# --- a crash between writes ------------------------------------------------------------------


def test_a_crash_before_state_json_keeps_the_previous_state(
    in_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = in_workspace
    state_dir = StateDir(Path("state"))
    before = state_dir.read()
    workspace.edit("minasi.yaml", "pop3: {enabled: false}", "pop3: {enabled: true}")

    def crash(self: StateDir, state: State) -> None:
        raise OSError("injected crash: the artifacts are written, state.json is not")

    with monkeypatch.context() as patched:
        patched.setattr(StateDir, "write", crash)
        prepared = prepare(load_specs(workspace.specs), state_dir)
        with pytest.raises(OSError, match="injected crash"):
            apply(prepared, state_dir)

    # The artifacts of serial 2 are on disk, but nothing names them: serial 1 still rules.
    assert state_dir.artifacts(2).is_dir()
    after = state_dir.read()
    assert (after.serial, after.lineage, after.applied) == (1, before.lineage, before.applied)
    assert all(a["serial"] == 1 for a in workspace.actions())  # the runtime was not told
    assert "Drift" not in ok(workspace.plan("--detailed-exitcode"), 2)

    # Leftovers of the crashed apply, junk included, must not leak into the next one.
    (state_dir.artifacts(2) / "Minasi" / "zones" / "junk.zone").write_text("garbage\n")
    assert "State serial 2." in ok(workspace.apply("--auto-approve"))
    assert not (state_dir.artifacts(2) / "Minasi" / "zones" / "junk.zone").exists()
    assert not state_dir.artifacts(1).exists()
    ok(workspace.plan("--expect-no-changes"))


def test_a_crash_while_writing_the_artifacts_keeps_the_previous_state(
    in_workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = in_workspace
    state_dir = StateDir(Path("state"))
    workspace.edit("dcnw.yaml", "surname: Quinn", "surname: Quincy")

    def half_then_crash(root: Path, files: dict[str, str], progress: Progress | None) -> None:
        names = sorted(files)
        write_tree_durably(root, {n: files[n] for n in names[: len(names) // 2]}, progress)
        raise OSError("injected crash halfway through the artifacts")

    with monkeypatch.context() as patched:
        patched.setattr(apply_module, "write_tree_durably", half_then_crash)
        with pytest.raises(OSError, match="halfway"):
            apply(prepare(load_specs(workspace.specs), state_dir), state_dir)
    assert state_dir.read().serial == 1
    assert state_dir.artifacts(2).is_dir()

    prepared = prepare(load_specs(workspace.specs), state_dir)
    assert not prepared.plan.drift
    assert prepared.plan.counts()[Action.UPDATE] == 2  # the mailbox and its host config
    assert apply(prepared, state_dir).serial == 2
    on_disk = {
        str(p.relative_to(state_dir.artifacts(2)))
        for p in state_dir.artifacts(2).rglob("*")
        if p.is_file()
    }
    assert on_disk == set(prepared.files)
    assert not prepare(load_specs(workspace.specs), state_dir).plan.has_changes


# --- drift -----------------------------------------------------------------------------------


def test_drift_is_shown_and_restored(seed: Workspace) -> None:
    applied = seed.state / "artifacts" / "1"
    zone = applied / "Minasi" / "zones" / "minasi.com.zone"
    hermes = applied / "DCNW" / "hosts" / "hermes.json"
    originals = {p.relative_to(applied): p.read_bytes() for p in (zone, hermes)}
    zone_text = zone.read_text()
    assert zone_text.count("IN A   10.2.0.10\n") == 1
    zone.write_text(zone_text.replace("IN A   10.2.0.10\n", "IN A   10.2.0.99\n"))
    hermes.unlink()

    expecting, as_json = seed.plans(["--expect-no-changes"], ["--json"])
    text = ok(expecting, 2)
    drift_at = text.index("Drift:")
    assert "  ! DCNW/hosts/hermes.json (deleted)\n" in text
    assert "  ! Minasi/zones/minasi.com.zone (modified)\n" in text
    assert drift_at < text.index("mailwright will perform the following actions:")
    assert "  - record arlington.minasi.com. A 10.2.0.99\n" in text
    assert "  + record arlington.minasi.com. A 10.2.0.10\n" in text
    assert "  + host DCNW/hermes\n" in text
    document = json.loads(ok(as_json))
    assert {"artifact": "DCNW/hosts/hermes.json", "problem": "deleted"} in document["drift"]

    ok(seed.apply("--auto-approve"))
    restored = seed.state / "artifacts" / "2"
    assert {p: (restored / p).read_bytes() for p in originals} == originals
    ok(seed.plan("--expect-no-changes"))


def test_an_artifact_touched_but_not_changed_is_no_drift(seed: Workspace) -> None:
    """The state's fingerprints (size, mtime) spare a plan reading what is as applied; a file
    whose mtime moved is read and compared, and is drift only if its bytes differ."""
    state = json.loads((seed.state / "state.json").read_text())
    applied = seed.state / "artifacts" / "1"
    files = {str(p.relative_to(applied)) for p in applied.rglob("*") if p.is_file()}
    assert set(state["fingerprints"]) == files
    gal = applied / "Minasi" / "gal.json"
    os.utime(gal, ns=(gal.stat().st_atime_ns, gal.stat().st_mtime_ns + 10**9))
    ok(seed.plan("--expect-no-changes"))
    text = gal.read_text()
    gal.write_text(text.replace('"Mark Minasi"', '"Mark Minasj"'))  # the same size
    assert gal.stat().st_size == len(text.encode())
    assert "  ! Minasi/gal.json (modified)\n" in ok(seed.plan("--expect-no-changes"), 2)


def test_drift_into_unparseable_files_is_restored(seed: Workspace) -> None:
    applied = seed.state / "artifacts" / "1" / "DCNW"
    originals = {p: (applied / p).read_bytes() for p in ("gal.json", "gwart.txt")}
    (applied / "gal.json").write_text("not json\n")
    with open(applied / "gwart.txt", "ab") as handle:
        handle.write(b"\xff")

    text = ok(seed.plan("--expect-no-changes"), 2)
    assert "  ! DCNW/gal.json (modified)\n" in text
    assert "  ! DCNW/gwart.txt (modified)\n" in text
    assert "  + mailbox DCNW/jane\n" in text  # what restoring the GAL brings back

    ok(seed.apply("--auto-approve"))
    restored = seed.state / "artifacts" / "2" / "DCNW"
    assert {p: (restored / p).read_bytes() for p in originals} == originals


# --- blast radius ----------------------------------------------------------------------------


def test_removing_over_30_percent_of_mailboxes_needs_force(acme: Workspace) -> None:
    spec = acme.root / "acme.yaml"
    spec.write_text(acme_spec(ACME_ALIASES[5:]))

    plain, as_json, as_markdown, saved = acme.plans(
        [], ["--json"], ["--format", "markdown"], ["--out", "unsafe.plan"]
    )
    text = ok(plain)
    assert text.startswith("Warning: removes 5 of 12 mailboxes of organization Acme (over 30%)")
    assert "--force" in text.splitlines()[0]
    assert counts(text)[2] >= 5
    assert json.loads(ok(as_json))["unsafe"] == [
        "removes 5 of 12 mailboxes of organization Acme (over 30%)"
    ]
    markdown = ok(as_markdown)
    assert "removes 5 of 12 mailboxes" in markdown and "--force" in markdown

    stderr = refused(acme.apply("--auto-approve"))
    assert "--force" in stderr and "removes 5 of 12 mailboxes" in stderr
    assert acme.serial() == 1
    ok(saved)
    assert "--force" in refused(acme.run("apply", "unsafe.plan", "--state", "state"))
    assert acme.serial() == 1

    assert "State serial 2." in ok(acme.run("apply", "unsafe.plan", "--state", "state", "--force"))
    assert StateDir(acme.state).read().applied["Acme"]["artifacts"]


def test_removing_up_to_30_percent_needs_no_force(acme: Workspace) -> None:
    (acme.root / "acme.yaml").write_text(acme_spec(ACME_ALIASES[3:]))
    text = ok(acme.apply("--auto-approve"))
    assert "Warning" not in text
    assert acme.serial() == 2


def test_changing_a_zones_nameservers_needs_force(acme: Workspace) -> None:
    (acme.root / "acme.yaml").write_text(acme_spec(ACME_ALIASES, "[mail, ns2.example.net.]"))
    text = ok(acme.plan())
    assert text.startswith("Warning: changes an NS record:")
    assert "Warning: changes an NS record: + acme.example. NS ns2.example.net.;" in text
    assert "  ~ zone acme.example\n" in text  # the changed zone gets a new serial

    assert "changes an NS record" in refused(acme.apply("--auto-approve"))
    assert acme.serial() == 1
    ok(acme.apply("--auto-approve", "--force"))
    assert acme.serial() == 2


def test_blast_radius_counts_mailboxes_and_records_only() -> None:
    mailboxes = {
        f"mailbox u{i}@acme.example": Resource(
            "mailbox", f"u{i}@acme.example", "Acme", {"alias": f"u{i}"}
        )
        for i in range(10)
    }
    routes = [Resource("route", f"Acme SMTP:p{i} via x", "Acme", {}) for i in range(5)]
    txt = Resource("record", 'acme.example. TXT "our NS is elsewhere"', "Acme", {"zone": "x"})
    zone = Resource("zone", "acme.example", "Acme", {"serial": 1})
    before = {r.address: r for r in [*mailboxes.values(), *routes, txt, zone]}
    deleted = [ResourceChange(Action.DELETE, r, None) for r in [*routes, txt]]
    assert unsafe_findings(before, deleted) == []
    deleted += [ResourceChange(Action.DELETE, r, None) for r in list(mailboxes.values())[:4]]
    assert unsafe_findings(before, deleted) == [
        "removes 4 of 10 mailboxes of organization Acme (over 30%)"
    ]


# --- retained stores -------------------------------------------------------------------------


def test_a_removed_mailbox_keeps_its_store_until_purged(seed: Workspace) -> None:
    store = seed.state / "hosts" / "arlington" / "store" / "paula"
    message = store / "Maildir" / "new" / "1"
    message.parent.mkdir(parents=True)
    message.write_bytes(b"Subject: keep me\r\n\r\nhello\r\n")
    seed.drop_mailbox("minasi.yaml", "paula")

    text = ok(seed.apply("--auto-approve"))
    assert (
        "  - mailbox Minasi/paula (its mail goes to retained/ until "
        "`mailwright purge Minasi/paula`)\n" in text
    )
    retained = seed.state / "retained" / "Minasi"
    kept = [p.relative_to(retained) for p in retained.rglob("*") if p.is_file()]
    assert [p.parts[1:] for p in kept] == [("Maildir", "new", "1")]
    assert kept[0].parts[0].startswith("paula")
    assert (retained / kept[0]).read_bytes() == b"Subject: keep me\r\n\r\nhello\r\n"
    assert not store.exists()

    assert "--all" in refused(seed.run("purge", "--state", "state"))
    assert (retained / kept[0]).exists()
    assert "purged" in ok(seed.run("purge", "--all", "--state", "state"))
    assert not (retained / kept[0].parts[0]).exists()


# --- the launcher seam and host addresses ----------------------------------------------------


def test_the_launcher_records_start_reload_and_restart(seed: Workspace) -> None:
    first = seed.actions()
    assert {(a["host"], a["action"], a["serial"]) for a in first} == {
        ("DCNW/athena", "start", 1),
        ("DCNW/dns", "start", 1),
        ("DCNW/hermes", "start", 1),
        ("Minasi/arlington", "start", 1),
    }
    assert all(a["artifacts"].endswith(str(Path("artifacts") / "1")) for a in first)

    # Pat (on Athena) changes: Athena reloads its mailboxes, the organization's hosts the GAL.
    seed.edit("dcnw.yaml", "surname: Quinn", "surname: Quincy")
    ok(seed.apply("--auto-approve"))
    second = seed.actions()[len(first) :]
    assert [(a["host"], a["action"], a["serial"]) for a in second] == [
        ("DCNW/athena", "reload", 2),
        ("DCNW/dns", "reload", 2),
        ("DCNW/hermes", "reload", 2),
    ]

    seed.edit("minasi.yaml", "pop3: {enabled: false}", "pop3: {enabled: true}")
    ok(seed.apply("--auto-approve"))
    third = seed.actions()[len(first) + len(second) :]
    assert [(a["host"], a["action"]) for a in third] == [("Minasi/arlington", "reload")]

    # Only what a host listens on restarts it, and only it: Athena takes the dns role.
    seed.edit("dcnw.yaml", "roles: [store]", "roles: [store, dns]")
    ok(seed.apply("--auto-approve"))
    fourth = seed.actions()[len(first) + len(second) + len(third) :]
    assert [(a["host"], a["action"], a["reason"]) for a in fourth if a["action"] != "reload"] == [
        ("DCNW/athena", "restart", "listens differently: roles, services")
    ]


def test_hosts_keep_their_loopback_addresses(seed: Workspace) -> None:
    addresses = seed.state_json()["host_addresses"]
    assert set(addresses) == {"DCNW/athena", "DCNW/dns", "DCNW/hermes", "Minasi/arlington"}
    loopback = ipaddress.IPv4Network("127.0.0.0/8")
    assert all(ipaddress.IPv4Address(a) in loopback for a in addresses.values())
    assert len(set(addresses.values())) == len(addresses)

    seed.edit(
        "minasi.yaml",
        "\nmailboxes:",
        "      - name: alexandria\n"
        "        fqdn: alexandria.minasi.com\n"
        "        ipv4: 10.2.0.11\n"
        "        roles: [store]\n"
        "\nmailboxes:",
    )
    seed.edit("minasi.yaml", "pop3: {enabled: false}", "pop3: {enabled: true}")
    text = ok(seed.apply("--auto-approve"))
    assert "  start Minasi/alexandria (new host)\n" in text
    now = seed.state_json()["host_addresses"]
    assert {h: a for h, a in now.items() if h in addresses} == addresses
    new = ipaddress.IPv4Address(now["Minasi/alexandria"])
    assert new in loopback
    assert str(new) not in addresses.values()
    assert ("Minasi/alexandria", "start") in {(a["host"], a["action"]) for a in seed.actions()}
