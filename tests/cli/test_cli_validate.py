"""`mailwright validate`: text, JSON and GitHub output, and its exit codes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import DIAGNOSTIC_CASES, ROOT
from tests.helpers import run_mailwright as mailwright

# The organization specs among examples/ (which also holds other YAML, such as CI configs).
EXAMPLES = [
    str(p.relative_to(ROOT))
    for p in sorted((ROOT / "examples").rglob("*.yaml"))
    if "\norganization:" in "\n" + p.read_text(encoding="utf-8")
]
INVALID = str((DIAGNOSTIC_CASES / "proxy_collision.yaml").relative_to(ROOT))
WARNINGS_ONLY = str((DIAGNOSTIC_CASES / "no_inbound_ims.yaml").relative_to(ROOT))
GITHUB_LINE = re.compile(
    r"^::(error|warning) file=[^,:]+,line=\d+,col=\d+,title=[a-z0-9-]+::[^\r\n]+$"
)


def test_valid_specs_exit_0_with_a_summary_each() -> None:
    result = mailwright("validate", *EXAMPLES)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == f"{len(EXAMPLES)} specs valid"
    for spec, line in zip(EXAMPLES, lines[:-1], strict=True):
        assert line.startswith(f"{spec}: organization ")
    assert result.stderr == ""


def test_errors_exit_1_and_are_counted() -> None:
    result = mailwright("validate", INVALID)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[-1] == f"{len(lines) - 1} errors"
    assert all(line.startswith(f"{INVALID}:") for line in lines[:-1])


def test_warnings_alone_exit_0() -> None:
    result = mailwright("validate", WARNINGS_ONLY)
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == "1 spec valid, 4 warnings"
    assert ": warning: " in result.stdout
    assert ": error: " not in result.stdout


def test_one_invalid_spec_fails_the_run_but_every_spec_is_checked() -> None:
    result = mailwright("validate", EXAMPLES[0], INVALID, WARNINGS_ONLY)
    assert result.returncode == 1
    files = {line.split(":", 1)[0] for line in result.stdout.splitlines()[:-1]}
    assert files == {INVALID, WARNINGS_ONLY}
    assert result.stdout.splitlines()[-1] == "6 errors, 4 warnings"


def test_json_output() -> None:
    result = mailwright("validate", "--format", "json", INVALID, WARNINGS_ONLY)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["valid"] is False
    assert document["counts"] == {
        "files": 2,
        "errors": 6,
        "warnings": 4,
        "organizations": 1,
        "mailboxes": 1,
    }
    first = next(d for d in document["diagnostics"] if d["file"] == INVALID)
    assert set(first) == {"severity", "file", "line", "column", "message", "code"}
    assert (first["file"], first["line"], first["column"]) == (INVALID, 26, 47)
    assert first["code"] == "duplicate-address"
    keys = [(d["file"], d["line"], d["column"]) for d in document["diagnostics"]]
    assert keys == sorted(keys)


def test_json_output_of_valid_specs() -> None:
    result = mailwright("validate", "-f", "json", *EXAMPLES)
    assert result.returncode == 0
    document = json.loads(result.stdout)
    assert document["valid"] is True
    assert document["diagnostics"] == []
    assert document["counts"]["organizations"] == len(EXAMPLES)
    assert document["counts"]["mailboxes"] > 0


def test_github_annotations() -> None:
    result = mailwright("validate", "--format", "github", INVALID, WARNINGS_ONLY)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 10
    for line in lines:
        assert GITHUB_LINE.match(line), line
    assert f"::error file={INVALID},line=26,col=47,title=duplicate-address::address " in (
        result.stdout
    )
    assert sum(line.startswith("::warning ") for line in lines) == 4


def test_github_annotations_escape_their_properties_and_data(tmp_path: Path) -> None:
    spec = tmp_path / "odd,name:1.yaml"
    shutil.copy(DIAGNOSTIC_CASES / "cost_range.yaml", spec)
    result = mailwright("validate", "--format", "github", spec.name, cwd=tmp_path)
    assert result.returncode == 1
    first = result.stdout.splitlines()[0]
    assert first.startswith("::error file=odd%2Cname%3A1.yaml,line=14,col=48,title=invalid-value::")


def test_github_output_of_valid_specs_is_empty() -> None:
    result = mailwright("validate", "--format", "github", *EXAMPLES)
    assert (result.returncode, result.stdout) == (0, "")


def test_a_missing_spec_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    result = mailwright("validate", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "nowhere.yaml:1:1: error: cannot read spec: No such file or directory",
        "1 error",
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("arguments", [("validate",), ("validate", "--format", "xml", EXAMPLES[0])])
def test_usage_errors_exit_2(arguments: tuple[str, ...]) -> None:
    result = mailwright(*arguments)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
