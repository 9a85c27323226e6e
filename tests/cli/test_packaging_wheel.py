"""The wheel holds every subpackage under `mailwright/` and nothing at the top level.

An editable install imports a subpackage missing from `[tool.setuptools] packages` all the same;
only the built wheel shows it is gone.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

from tests.helpers import ROOT

SOURCES = ["pyproject.toml", "README.md", "schema", "compiler", "runtime"]


def build_options() -> list[str]:
    """`--no-isolation` when the venv's setuptools meets the build requirement (no download)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for requirement in map(Requirement, pyproject["build-system"]["requires"]):
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return []
        if not requirement.specifier.contains(installed, prereleases=True):
            return []
    return ["--no-isolation"]


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    # Build from a copy: the build leaves build/ and *.egg-info behind.
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), *build_options(), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [wheel] = out.glob("mailwright-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_every_file_of_every_package_is_in_the_wheel(wheel_files: list[str]) -> None:
    # Modules, and data such as the compiler's templates: whatever the package folders hold.
    for folder in ("schema", "compiler", "runtime"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                name = path.relative_to(ROOT).as_posix()
                assert f"mailwright/{name}" in wheel_files


def test_package_data_is_in_the_wheel(wheel_files: list[str]) -> None:
    assert "mailwright/schema/mailwright.schema.json" in wheel_files
    for folder in ("schema", "compiler", "runtime"):
        assert f"mailwright/{folder}/py.typed" in wheel_files
    assert "mailwright/runtime/__init__.py" in wheel_files


def test_nothing_lands_at_the_top_level(wheel_files: list[str]) -> None:
    tops = {name.split("/", 1)[0] for name in wheel_files}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mailwright"}
    assert not any(name.startswith(("schema/", "compiler/", "runtime/")) for name in wheel_files)


def test_the_console_script_is_declared(wheel_files: list[str]) -> None:
    assert any(name.endswith(".dist-info/entry_points.txt") for name in wheel_files)
