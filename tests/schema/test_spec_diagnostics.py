"""Invalid specs and the exact lines `mailwright validate` prints for them.

Each case under fixtures/golden/ is a spec `NAME.yaml` (with any CSV files it imports beside it)
or a folder `NAME/` of specs validated together. `NAME.expected` holds what `mailwright validate`
prints for it, run from the repository root with paths relative to it. After a deliberate change
of wording, regenerate them with `MAILWRIGHT_REGEN_GOLDEN=1 .venv/bin/pytest tests/schema` and
review the diff.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (
    DIAGNOSTIC_CASES,
    REGENERATE_GOLDEN,
    ROOT,
    assert_golden,
    run_mailwright,
)

DIAGNOSTIC = re.compile(r"^(.+?):(\d+):(\d+): (error|warning): ")
CASES = sorted(p for p in DIAGNOSTIC_CASES.iterdir() if p.suffix == ".yaml" or p.is_dir())
# Plaintext passwords the fixtures hold by mistake: no output may repeat them.
PLAINTEXTS = {
    "plaintext_password.yaml": ["Tr0ub4dor&3-plaintext"],
    "csv_bad_value.yaml": ["plaintext-in-a-csv"],
}


def spec_arguments(case: Path) -> list[str]:
    specs = sorted(case.glob("*.yaml")) if case.is_dir() else [case]
    return [str(spec.relative_to(ROOT)) for spec in specs]


@functools.cache
def validate(*arguments: str) -> subprocess.CompletedProcess[str]:
    # Cached: each case's output serves several tests.
    return run_mailwright("validate", *arguments)


def positions(output: str) -> list[tuple[str, int, int]]:
    return [
        (match[1], int(match[2]), int(match[3]))
        for line in output.splitlines()
        if (match := DIAGNOSTIC.match(line))
    ]


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_validate_prints_the_expected_diagnostics(case: Path) -> None:
    result = validate(*spec_arguments(case))
    assert result.stderr == "", result.stderr
    assert_golden(DIAGNOSTIC_CASES / f"{case.stem}.expected", result.stdout, "mailwright validate")
    has_errors = any(": error: " in line for line in result.stdout.splitlines())
    assert result.returncode == (1 if has_errors else 0)


@pytest.mark.parametrize("case", CASES, ids=[case.stem for case in CASES])
def test_diagnostics_are_sorted_by_position_and_never_a_traceback(case: Path) -> None:
    result = validate(*spec_arguments(case))
    found = positions(result.stdout)
    assert found == sorted(found)
    assert all(file.endswith((".yaml", ".csv")) for file, _, _ in found)
    assert "Traceback" not in result.stdout + result.stderr


def test_every_expected_file_belongs_to_a_case() -> None:
    stems = {case.stem for case in CASES}
    orphans = [p.name for p in DIAGNOSTIC_CASES.glob("*.expected") if p.stem not in stems]
    assert orphans == []
    if not REGENERATE_GOLDEN:
        assert all((DIAGNOSTIC_CASES / f"{stem}.expected").is_file() for stem in stems)


@pytest.mark.parametrize("output", ["text", "json", "github"])
@pytest.mark.parametrize("fixture", sorted(PLAINTEXTS))
def test_a_plaintext_password_never_appears_in_any_output(fixture: str, output: str) -> None:
    result = validate("--format", output, *spec_arguments(DIAGNOSTIC_CASES / fixture))
    assert result.returncode == 1, result.stderr
    assert "hash-password" in result.stdout
    for plaintext in PLAINTEXTS[fixture]:
        assert plaintext not in result.stdout + result.stderr


def test_json_output_holds_the_same_diagnostics_as_the_text() -> None:
    arguments = spec_arguments(DIAGNOSTIC_CASES / "proxy_collision.yaml")
    text, document = validate(*arguments), validate("--format", "json", *arguments)
    diagnostics = json.loads(document.stdout)["diagnostics"]
    assert [
        f"{d['file']}:{d['line']}:{d['column']}: {d['severity']}: {d['message']}"
        for d in diagnostics
    ] == text.stdout.splitlines()[:-1]
