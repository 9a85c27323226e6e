"""`mailwright fmt`: rewrites specs in canonical form, keeps comments; `--check` changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers import run_mailwright as mailwright

MESSY = """\
# yaml-language-server: $schema=../schema/mailwright.schema.json
sites:
- servers:   # one server does it all
  - roles: [store, ims, dns]
    ipv4: 192.0.2.10
    fqdn: mail.acme.example
    name: mail
  name: HQ

# who we are
organization:
    domains: [acme.example]   # owned
    name: Acme
"""

# End-of-line comments keep their column where the line leaves room (ruamel.yaml).
CANONICAL = """\
# yaml-language-server: $schema=../schema/mailwright.schema.json

# who we are
organization:
  name: Acme
  domains: [acme.example]     # owned
sites:
  - name: HQ
    servers: # one server does it all
      - name: mail
        fqdn: mail.acme.example
        ipv4: 192.0.2.10
        roles: [store, ims, dns]
"""


def test_fmt_rewrites_in_canonical_form_keeping_comments(tmp_path: Path) -> None:
    (tmp_path / "acme.yaml").write_text(MESSY, encoding="utf-8")
    result = mailwright("fmt", "acme.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "reformatted acme.yaml\n", "")
    text = (tmp_path / "acme.yaml").read_text(encoding="utf-8")
    assert text == CANONICAL
    for comment in ("# yaml-language-server", "# who we are", "# owned", "# one server"):
        assert comment in text


def test_fmt_is_idempotent(tmp_path: Path) -> None:
    (tmp_path / "acme.yaml").write_text(MESSY, encoding="utf-8")
    mailwright("fmt", "acme.yaml", cwd=tmp_path)
    again = mailwright("fmt", "acme.yaml", cwd=tmp_path)
    assert (again.returncode, again.stdout) == (0, "")
    assert (tmp_path / "acme.yaml").read_text(encoding="utf-8") == CANONICAL


def test_the_formatted_spec_still_validates(tmp_path: Path) -> None:
    (tmp_path / "acme.yaml").write_text(MESSY, encoding="utf-8")
    mailwright("fmt", "acme.yaml", cwd=tmp_path)
    assert mailwright("validate", "acme.yaml", cwd=tmp_path).returncode == 0


def test_check_lists_the_files_it_would_change_and_changes_none(tmp_path: Path) -> None:
    (tmp_path / "messy.yaml").write_text(MESSY, encoding="utf-8")
    (tmp_path / "tidy.yaml").write_text(CANONICAL, encoding="utf-8")
    (tmp_path / "messy2.yaml").write_text(MESSY, encoding="utf-8")
    result = mailwright("fmt", "--check", "messy.yaml", "tidy.yaml", "messy2.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["would reformat messy.yaml", "would reformat messy2.yaml"]
    assert (tmp_path / "messy.yaml").read_text(encoding="utf-8") == MESSY


def test_check_passes_on_canonical_files(tmp_path: Path) -> None:
    (tmp_path / "tidy.yaml").write_text(CANONICAL, encoding="utf-8")
    result = mailwright("fmt", "--check", "tidy.yaml", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_examples_are_stable_once_formatted(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    specs = [
        str(p.relative_to(tmp_path))
        for p in sorted(tmp_path.rglob("*.yaml"))
        if "\norganization:" in "\n" + p.read_text(encoding="utf-8")
    ]
    assert mailwright("fmt", *specs, cwd=tmp_path).returncode == 0
    check = mailwright("fmt", "--check", *specs, cwd=tmp_path)
    assert (check.returncode, check.stdout) == (0, "")
    assert mailwright("validate", *specs, cwd=tmp_path).returncode == 0


def test_a_syntax_error_is_reported_at_its_place_and_nothing_is_written(tmp_path: Path) -> None:
    broken = "organization:\n  name: [Acme\nsites: []\n"
    (tmp_path / "broken.yaml").write_text(broken, encoding="utf-8")
    result = mailwright("fmt", "broken.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("broken.yaml:3:6: error: YAML syntax: ")
    assert "Traceback" not in result.stderr
    assert (tmp_path / "broken.yaml").read_text(encoding="utf-8") == broken


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    result = mailwright("fmt", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("nowhere.yaml:1:1: error: cannot read")
