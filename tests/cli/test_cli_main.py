"""`main(argv)` runs the command line in-process and returns the exit code; `errors` is the one
mapping from what a command meets to the line on stderr and the exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwright.compiler.cli import errors, main, run, spec
from mailwright.compiler.plan import UnsafePlanError
from mailwright.compiler.route import RouteError
from mailwright.compiler.state import LockedError, StateError
from mailwright.compiler.zones import ZoneError
from mailwright.runtime.submit import SubmitError
from mailwright.runtime.targets import LaunchError
from tests.helpers import DIAGNOSTIC_CASES, SEED_SPECS

SEED = [str(path) for path in SEED_SPECS]
SEND = ["send", "--from", "a@b", "--to", "c@d", "--subject", "s", "--password-env", "P"]
INVALID = DIAGNOSTIC_CASES / "proxy_collision.yaml"

# One instance of every mapped type, as the library raises it.
MAPPED: list[Exception] = [
    errors.CommandError("empty password"),
    RouteError("unknown server 'zeus'"),
    StateError("state s is not a directory"),
    LockedError(Path("s/lock"), {"pid": 7, "host": "h", "since": "then"}),
    UnsafePlanError(["deletes 3 mailboxes", "moves 5"]),
    ZoneError("dcnw.com", ["no SOA", "two CNAMEs"]),
    LaunchError("athena did not start:\nport 25 in use"),
    SubmitError("wrong password for jane@dcnw.com"),
]


@pytest.fixture(autouse=True)
def _no_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILWRIGHT_RUNTIME", "off")
    monkeypatch.delenv("MAILWRIGHT_STATE", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.mark.parametrize("exc", MAPPED, ids=lambda exc: type(exc).__name__)
def test_each_mapped_error_is_one_line_and_exit_1(
    exc: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    line = errors.message(exc)
    assert line is not None
    assert line.startswith("error: ")
    assert "\n" not in line
    assert errors.report(exc) == errors.EXIT_FAILURE
    assert capsys.readouterr().err == line + "\n"


def test_an_error_not_mapped_is_not_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert errors.message(RuntimeError("a bug")) is None
    assert errors.report(RuntimeError("a bug")) is None
    assert capsys.readouterr().err == ""


def test_cannot_turns_a_file_error_into_a_refusal(tmp_path: Path) -> None:
    with pytest.raises(errors.CommandError) as raised, errors.cannot(f"read {tmp_path}/x"):
        (tmp_path / "x").read_text(encoding="utf-8")
    assert str(raised.value) == f"cannot read {tmp_path}/x: No such file or directory"


def test_a_good_spec_validates_to_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", *SEED]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 specs valid"


def test_a_bad_spec_is_1_with_its_located_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(INVALID)]) == 1
    assert f"{INVALID}:" in capsys.readouterr().out
    # Commands that load specs print the diagnostics to stderr and compile nothing.
    assert main(["compile", str(INVALID), "--out", "unused"]) == 1
    captured = capsys.readouterr()
    assert f"{INVALID}:" in captured.err
    assert ": error: " in captured.err
    assert captured.out == ""


def test_plan_with_changes_has_its_detailed_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "state")
    assert main(["plan", *SEED, "--state", state]) == 0
    assert main(["plan", *SEED, "--state", state, "--detailed-exitcode"]) == 2
    assert "DCNW" in capsys.readouterr().out


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_a_library_error_is_one_line_without_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["route", "mark@minasi.com", "--from", "zeus", *SEED]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["purge", "--state", "{tmp}"], "error: name the retained stores to delete, or pass --all"),
        (["logs", "athena", "--state", "{tmp}"], "error: no log for host athena in {tmp}"),
        (["track", "<nothing@here>", "--state", "{tmp}"], "error: no host has seen <nothing@here>"),
        (SEND, "error: give exactly one of --body and --body-file"),
        (
            [*SEND, "--body-file", "{tmp}/none.txt"],
            "error: cannot read {tmp}/none.txt: No such file or directory",
        ),
        (
            ["graph", *SEED, "--out", "{tmp}/no/such/dir/org.dot"],
            "error: cannot write {tmp}/no/such/dir/org.dot: No such file or directory",
        ),
    ],
    ids=["purge", "logs", "track", "send-body", "send-body-file", "graph-write"],
)
def test_refusals_are_one_line_and_exit_1(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == 1
    assert capsys.readouterr().err == expected.replace("{tmp}", str(tmp_path)) + "\n"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(spec, "spec_json_schema_text", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["schema"])


def test_the_console_script_exits_with_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["mailwright", "no-such-command"])
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code == 2
