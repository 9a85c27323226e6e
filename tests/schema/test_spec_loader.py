"""The loader's API: LoadedSpec for valid specs, SpecError carrying every diagnostic otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mailwright.runtime.routing import AddressType
from mailwright.schema import Severity, SpecError, check_specs, load_spec, load_specs
from mailwright.schema.addressing import check_address
from tests.helpers import DIAGNOSTIC_CASES, ROOT

# The organization specs among examples/ (which also holds other YAML, such as CI configs).
EXAMPLES = sorted(
    p
    for p in (ROOT / "examples").rglob("*.yaml")
    if "\norganization:" in "\n" + p.read_text(encoding="utf-8")
)


def test_the_examples_load_together_without_diagnostics() -> None:
    loaded, diagnostics = check_specs(EXAMPLES)
    assert diagnostics == []
    assert [spec.path for spec in loaded] == EXAMPLES
    assert len({spec.name for spec in loaded}) == len(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_mailbox_gets_valid_primary_addresses_of_each_type(example: Path) -> None:
    loaded = load_spec(example)
    assert len(loaded.proxies) == len(loaded.mailboxes) > 0
    for mailbox, proxies in zip(loaded.mailboxes, loaded.proxies, strict=True):
        primaries = [p for p in proxies if p.primary]
        assert sorted(p.type for p in primaries) == sorted(AddressType), mailbox.alias
        for proxy in proxies:
            assert check_address(proxy.type, proxy.address) is None, proxy


def test_imported_mailboxes_come_after_the_spec_own(tmp_path: Path) -> None:
    for name in ("csv_home_server.yaml", "csv_home_server.csv"):
        shutil.copy(DIAGNOSTIC_CASES / name, tmp_path / name)
    csv = tmp_path / "csv_home_server.csv"
    # Keep only the row that is valid: bob without his stolen address.
    header, bob, *_ = csv.read_text().splitlines()
    csv.write_text(f"{header}\n{bob.removesuffix(',smtp:ann@acme.example')},\n")
    loaded = load_spec(tmp_path / "csv_home_server.yaml")
    assert [m.alias for m in loaded.spec.mailboxes] == ["ann"]
    assert [m.alias for m in loaded.mailboxes] == ["ann", "bob"]
    assert loaded.mailboxes[1].home_server == "mail"


def test_spec_error_holds_every_diagnostic_sorted() -> None:
    with pytest.raises(SpecError) as raised:
        load_spec(DIAGNOSTIC_CASES / "wrong_type.yaml")
    diagnostics = raised.value.diagnostics
    assert len(diagnostics) == 10
    assert diagnostics == sorted(diagnostics, key=lambda d: d.sort_key())
    assert raised.value.errors == diagnostics
    assert str(raised.value).splitlines() == [str(d) for d in diagnostics]


def test_related_places_are_named_in_the_message() -> None:
    with pytest.raises(SpecError) as raised:
        load_spec(DIAGNOSTIC_CASES / "proxy_collision.yaml")
    first = raised.value.diagnostics[0]
    assert first.code == "duplicate-address"
    assert (first.position.line, first.position.column) == (26, 47)
    assert first.message.endswith(f"(at {DIAGNOSTIC_CASES / 'proxy_collision.yaml'}:16:12)")


def test_a_plaintext_password_is_not_repeated_anywhere() -> None:
    with pytest.raises(SpecError) as raised:
        load_spec(DIAGNOSTIC_CASES / "plaintext_password.yaml")
    error = raised.value
    assert "Tr0ub4dor" not in str(error) + repr(error.diagnostics)
    assert all(d.code == "invalid-value" for d in error.diagnostics)


def test_a_password_hash_is_kept_out_of_reprs() -> None:
    mailbox = load_spec(EXAMPLES[0]).mailboxes[0]
    assert mailbox.password.startswith("$argon2id$")
    assert mailbox.password not in repr(mailbox)


def test_warnings_alone_leave_a_spec_loadable() -> None:
    [loaded] = load_specs([DIAGNOSTIC_CASES / "no_inbound_ims.yaml"])
    assert {w.severity for w in loaded.warnings} == {Severity.WARNING}
    assert [w.code for w in loaded.warnings] == [
        "no-inbound-ims",
        "no-inbound-ims",
        "retry-too-soon",
        "give-up-too-soon",
    ]


def test_a_missing_spec_is_a_diagnostic_not_an_exception(tmp_path: Path) -> None:
    loaded, [diagnostic] = check_specs([tmp_path / "nowhere.yaml"])
    assert loaded == []
    assert diagnostic.code == "unreadable"
    assert str(diagnostic) == f"{tmp_path / 'nowhere.yaml'}:1:1: error: cannot read spec: " + (
        "No such file or directory"
    )


def test_the_valid_specs_load_even_when_another_fails() -> None:
    loaded, diagnostics = check_specs([EXAMPLES[0], DIAGNOSTIC_CASES / "missing_key.yaml"])
    assert [spec.path for spec in loaded] == [EXAMPLES[0]]
    assert {d.position.file for d in diagnostics} == {str(DIAGNOSTIC_CASES / "missing_key.yaml")}


def test_a_spec_named_twice_is_loaded_once(tmp_path: Path) -> None:
    spec = tmp_path / "acme.yaml"
    shutil.copy(DIAGNOSTIC_CASES / "fqdn_external.yaml", spec)
    loaded, diagnostics = check_specs([spec, tmp_path / "." / "acme.yaml", spec])
    assert diagnostics == []
    assert [s.path for s in loaded] == [spec]


def test_organizations_validated_together_must_not_clash() -> None:
    specs = sorted((DIAGNOSTIC_CASES / "clash_domain").glob("*.yaml"))
    with pytest.raises(SpecError) as raised:
        load_specs(specs)
    clashes = raised.value.diagnostics
    assert {d.code for d in clashes} == {"clash-between-organizations"}
    assert [d.message.split(" of organization")[0] for d in clashes] == [
        "domain 'acme.example'",
        "server name 'mail'",
    ]
    # Each organization alone is fine.
    for spec in specs:
        assert load_spec(spec).warnings == ()
