"""examples/ci and .pre-commit-hooks.yaml: well-formed, and every command they run exists.

Also: every example spec is in canonical form and valid, since the CI example tells users to
check exactly that.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import MAILWRIGHT, ROOT, SEED_DIR, SEED_FILES
from tests.helpers import run_mailwright as mailwright

CI = ROOT / "examples" / "ci"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
WORKFLOW = CI / "github-workflow.yml"
PRE_COMMIT_CONFIG = CI / "pre-commit-config.yaml"
EXAMPLE_SPECS = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if p.parent != CI)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def hooks() -> dict[str, dict[str, Any]]:
    return {hook["id"]: hook for hook in load(HOOKS)}


def run_lines() -> list[str]:
    """Every command line of every `run:` step of the workflow, comments dropped."""
    lines = []
    for job in load(WORKFLOW)["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    lines.append(line.strip())
    return lines


def test_hooks_define_validate_and_fmt_check() -> None:
    found = hooks()
    assert sorted(found) == ["mailwright-fmt", "mailwright-validate"]
    assert found["mailwright-validate"]["entry"] == "mailwright validate"
    assert found["mailwright-fmt"]["entry"] == "mailwright fmt --check"
    for hook in found.values():
        assert hook["language"] == "python"
        assert hook["types"] == ["yaml"]
        assert hook.get("pass_filenames", True) is True
        assert "files" not in hook, "users narrow the files in their own config"
        assert hook["name"]


@pytest.mark.parametrize("hook_id", ["mailwright-validate", "mailwright-fmt"])
def test_each_hook_entry_names_a_real_subcommand(hook_id: str) -> None:
    program, subcommand, *options = shlex.split(hooks()[hook_id]["entry"])
    assert program == "mailwright"
    result = mailwright(subcommand, "--help")
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout, f"{subcommand} has no {option}"


def test_pre_commit_example_uses_this_repositorys_hooks() -> None:
    config = load(PRE_COMMIT_CONFIG)
    [repo] = config["repos"]
    assert repo["rev"]
    used = {hook["id"]: hook for hook in repo["hooks"]}
    assert set(used) == set(hooks())
    for hook in used.values():
        # Narrowed to the specs, and a pattern that selects specs/*.yaml and *.yml.
        pattern = re.compile(hook["files"])
        assert pattern.search("specs/dcnw.yaml")
        assert pattern.search("specs/minasi.yml")
        assert not pattern.search(".github/workflows/mailwright.yml")


def test_workflow_runs_the_documented_commands() -> None:
    workflow = load(WORKFLOW)
    # PyYAML reads the bare key `on` as True (YAML 1.1); GitHub reads it as "on".
    triggers = workflow.get("on", workflow.get(True))
    assert {"pull_request", "schedule"} <= set(triggers)
    assert triggers["schedule"][0]["cron"]
    text = "\n".join(run_lines())
    assert "pip install mailwright" in text
    for command in (
        "mailwright validate --format github specs/*.yaml",
        "mailwright plan --detailed-exitcode --json specs/*.yaml > plan.json",
        'mailwright plan --format markdown specs/*.yaml >> "$GITHUB_STEP_SUMMARY"',
        "mailwright plan --expect-no-changes specs/*.yaml",
    ):
        assert command in text, command
    # Exit 2 of --detailed-exitcode means changes, not failure.
    [plan_step] = [
        s for job in workflow["jobs"].values() for s in job["steps"] if s.get("id") == "plan"
    ]
    assert "-eq 2 ]" in plan_step["run"]
    uses = [s.get("uses", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any(u.startswith("actions/checkout@") for u in uses)
    assert any(u.startswith("actions/setup-python@") for u in uses)


def test_nightly_job_runs_only_on_schedule() -> None:
    jobs = load(WORKFLOW)["jobs"]
    [drift] = [
        job
        for job in jobs.values()
        if any("--expect-no-changes" in s.get("run", "") for s in job["steps"])
    ]
    assert "schedule" in drift["if"]


@pytest.mark.parametrize(
    "line", list(dict.fromkeys(x for x in run_lines() if x.startswith("mailwright "))), ids=str
)
def test_every_workflow_command_parses(line: str) -> None:
    """Each mailwright command of the workflow: its subcommand exists and knows its options."""
    words = shlex.split(line.partition(">")[0].partition("||")[0])
    subcommand, options = words[1], [w for w in words[2:] if w.startswith("--")]
    result = mailwright(subcommand, "--help")
    assert result.returncode == 0, result.stderr
    for option in options:
        assert option in result.stdout, f"{subcommand} has no {option}"


def test_check_job_steps_run_on_the_seed_specs(tmp_path: Path) -> None:
    """The check job's shell steps, run as GitHub would (bash -e) on a copy of the seed:
    against an empty state the plan has changes, which must not fail the step."""
    specs = tmp_path / "specs"
    specs.mkdir()
    for name in SEED_FILES:
        (specs / name).write_bytes((SEED_DIR / name).read_bytes())
    output, summary = tmp_path / "output", tmp_path / "summary.md"
    env = {
        **{k: v for k, v in os.environ.items() if k != "MAILWRIGHT_STATE"},
        "PATH": f"{Path(MAILWRIGHT).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GITHUB_OUTPUT": str(output),
        "GITHUB_STEP_SUMMARY": str(summary),
        "NO_COLOR": "1",
    }
    for step in load(WORKFLOW)["jobs"]["check"]["steps"]:
        script = step.get("run", "")
        if not script or "pip install" in script:
            continue
        done = subprocess.run(
            ["bash", "-e", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{step.get('name')}: {done.stdout}{done.stderr}"
    assert output.read_text(encoding="utf-8") == "changes=true\n"
    plan = json.loads((tmp_path / "plan.json").read_text(encoding="utf-8"))
    assert plan["format_version"] and plan["summary"]["add"] > 0
    assert "### mailwright plan" in summary.read_text(encoding="utf-8")
    assert "$argon2" not in (tmp_path / "plan.json").read_text(encoding="utf-8")


def test_readme_explains_every_file() -> None:
    readme = (CI / "README.md").read_text(encoding="utf-8")
    for name in ("github-workflow.yml", "pre-commit-config.yaml", ".pre-commit-hooks.yaml"):
        assert name in readme
    for hook_id in hooks():
        assert hook_id in readme


def test_example_specs_are_in_canonical_form() -> None:
    assert EXAMPLE_SPECS
    result = mailwright("fmt", "--check", *map(str, EXAMPLE_SPECS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_specs_are_valid() -> None:
    result = mailwright("validate", *map(str, EXAMPLE_SPECS))
    assert result.returncode == 0, result.stdout + result.stderr
