"""The CSV import cache: the same organization with or without it, and only clean, unchanged
imports taken from it."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from mailwright.schema import LoadedSpec, SpecError, check_specs, load_specs
from tests.helpers import ROOT


@pytest.fixture
def contoso(tmp_path: Path) -> Path:
    """The multi-site example (two CSV imports) in a folder of its own."""
    shutil.copytree(ROOT / "examples" / "multisite", tmp_path / "multisite")
    return tmp_path / "multisite" / "contoso.yaml"


def _load(spec: Path, cache: Path) -> LoadedSpec:
    [loaded] = load_specs([spec], cache)
    return loaded


def _same(a: LoadedSpec, b: LoadedSpec) -> None:
    assert a.mailboxes == b.mailboxes
    assert a.proxies == b.proxies
    assert a.spec == b.spec
    assert a.warnings == b.warnings


def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()}


def test_a_cached_load_equals_a_fresh_one(contoso: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fresh = _load(contoso, cache)
    assert len(_entries(cache)) == 2  # one per import
    for entry in cache.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600  # it holds password hashes
    again = _load(contoso, cache)
    _same(again, fresh)
    [uncached] = load_specs([contoso])
    _same(again, uncached)


def test_a_changed_csv_is_read_again_and_its_old_entry_pruned(
    contoso: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    _load(contoso, cache)
    before = _entries(cache)
    csv = contoso.parent / "directory" / "seattle.csv"
    csv.write_text(csv.read_text().replace("awilber,Alex,Wilber", "awilber,Alexander,Wilber"))
    loaded = _load(contoso, cache)
    [alex] = [m for m in loaded.mailboxes if m.alias == "awilber"]
    assert alex.given_name == "Alexander"
    after = _entries(cache)
    assert len(after) == 2 and len(after & before) == 1  # branches.csv kept, seattle.csv new


def test_a_changed_spec_makes_the_addresses_again(contoso: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _load(contoso, cache)
    contoso.write_text(
        contoso.read_text().replace('smtp: "%g.%s@contoso.com"', 'smtp: "%m@contoso.com"')
    )
    second = _load(contoso, cache)
    aliases = [m.alias for m in second.mailboxes]
    addresses = second.proxies[aliases.index("awilber")]
    assert "awilber@contoso.com" in [p.address for p in addresses]
    assert second.proxies != first.proxies


def test_an_import_with_a_problem_is_not_cached_and_reports_again(
    contoso: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    csv = contoso.parent / "directory" / "branches.csv"
    csv.write_text(csv.read_text().replace(",lon-store1,", ",nowhere,", 1))
    for _ in range(2):
        _, diagnostics = check_specs([contoso], cache)
        assert [d.code for d in diagnostics] == ["unknown-server"]
        assert diagnostics[0].position.file == str(csv)
        assert diagnostics[0].position.line == 2
    assert len(_entries(cache)) == 1  # seattle.csv only


def test_a_clash_with_a_cached_row_is_located_in_its_file(contoso: Path, tmp_path: Path) -> None:
    """A new row in one file takes an address of a row of a cached file (which loads first)."""
    cache = tmp_path / "cache"
    _load(contoso, cache)
    csv = contoso.parent / "directory" / "branches.csv"
    csv.write_text(csv.read_text().replace("smtp:oliver@eu.contoso.com", "smtp:alex@contoso.com"))
    with pytest.raises(SpecError) as raised:
        _load(contoso, cache)
    [clash] = raised.value.diagnostics
    assert clash.code == "duplicate-address"
    assert (clash.position.file, clash.position.line) == (str(csv), 2)
    assert f"{contoso.parent / 'directory' / 'seattle.csv'}:2:" in clash.message


@pytest.mark.parametrize("garbage", [b"", b"not a pickle", b"\x80\x05K\x01."])
def test_an_unreadable_entry_is_only_a_miss(contoso: Path, tmp_path: Path, garbage: bytes) -> None:
    cache = tmp_path / "cache"
    fresh = _load(contoso, cache)
    for entry in cache.iterdir():
        entry.write_bytes(garbage)
    _same(_load(contoso, cache), fresh)
    assert all(entry.stat().st_size > len(garbage) for entry in cache.iterdir())  # rewritten
