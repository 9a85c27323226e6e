"""The tests import the installed package and their own helpers, never the repository's folders.

pytest runs with `--import-mode=importlib` and `tests/` is a package: `tests.helpers` is this
folder's module while `mailwright.*` comes from the installed distribution (with the strict
editable install, its link tree under build/), and `schema`, `compiler` and `runtime` are not
importable at all. `python -m pytest` or `pythonpath = "."` would break the last two.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import mailwright.runtime
import tests.helpers
from tests.helpers import ROOT


def test_helpers_come_from_the_tests_folder() -> None:
    assert Path(tests.helpers.__file__) == ROOT / "tests" / "helpers.py"


def test_mailwright_is_the_installed_package_not_the_folders() -> None:
    [folder] = mailwright.runtime.__path__
    assert Path(folder) != ROOT / "runtime"
    assert str(ROOT) not in sys.path and "" not in sys.path
    for folder_name in ("schema", "compiler", "runtime"):
        assert importlib.util.find_spec(folder_name) is None, folder_name
