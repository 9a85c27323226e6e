"""Specs are read as YAML 1.2 (core schema), as yaml-language-server and ruamel.yaml read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailwright.schema import SpecError, load_spec
from mailwright.schema.fmt import format_spec
from mailwright.schema.recipients import generated_x400
from mailwright.schema.yamlsource import YamlSyntaxError, parse_yaml

HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$iX04azb1umBoKFFAOD8ssg$"
    "RrUVU/3aVCqR7gKEDl2c3bGdmVCJs6yT6U9+tDL1Cxs"
)
NORWAY = f"""\
organization:
  name: Nordmann
  domains: [nordmann.example]
sites:
  - name: Oslo
    addressing:
      x400: {{country: NO, admd: " ", prmd: Nordmann}}
    servers:
      - name: mail
        fqdn: mail.nordmann.example
        ipv4: 192.0.2.10
        roles: [store, ims]
mailboxes:
  - alias: ola
    given_name: Ola
    surname: Nordmann
    home_server: mail
    password: {HASH}
"""


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # YAML 1.1 booleans are plain strings in 1.2.
        ("NO", "NO"),
        ("no", "no"),
        ("Yes", "Yes"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        # The 1.2 core schema's own booleans and nulls.
        ("true", True),
        ("False", False),
        ("~", None),
        ("null", None),
        ("", None),
        # No sexagesimals, no implicit dates, no underscores in numbers.
        ("12:30", "12:30"),
        ("2001-12-14", "2001-12-14"),
        ("1_000", "1_000"),
        # 1.2 integers: 0o octal, 0x hex; a leading zero is still decimal.
        ("0o17", 15),
        ("0x1F", 31),
        ("-0x10", "-0x10"),  # the core schema signs decimals only
        ("017", 17),
        ("+42", 42),
        ("1.5", 1.5),
        ("1e3", 1000.0),
    ],
)
def test_plain_scalars_follow_the_yaml_1_2_core_schema(text: str, value: Any) -> None:
    parsed = parse_yaml(f"key: {text}\n")
    assert parsed == {"key": value}
    assert type(parsed["key"]) is type(value)


def test_country_no_stays_the_string_no(tmp_path: Path) -> None:
    spec = tmp_path / "nordmann.yaml"
    spec.write_text(NORWAY, encoding="utf-8")
    loaded = load_spec(spec)
    site = loaded.spec.sites[0]
    assert site.addressing.x400.country == "NO"
    assert generated_x400(loaded.mailboxes[0], site, loaded.spec.organization).startswith("c=NO;")


def test_fmt_keeps_country_no_as_written() -> None:
    assert 'x400: {country: NO, admd: " ", prmd: Nordmann}' in format_spec(NORWAY)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("a: 1\nb: 2\na: 3\n", 3, 1),
        ("a:\n  x: 1\n  x: 2\n", 3, 3),
        ("a: {x: 1, x: 2}\n", 1, 11),
        ("- {x: 1}\n- y: 1\n  z: 2\n  y: 3\n", 4, 3),
    ],
)
def test_duplicate_keys_are_errors_at_the_second_key(text: str, line: int, column: int) -> None:
    with pytest.raises(YamlSyntaxError) as raised:
        parse_yaml(text)
    assert "duplicate key" in raised.value.message
    assert (raised.value.line, raised.value.column) == (line, column)


def test_a_duplicate_key_fails_the_spec(tmp_path: Path) -> None:
    spec = tmp_path / "dup.yaml"
    spec.write_text(NORWAY.replace("  name: Nordmann\n", "  name: Nordmann\n  name: Other\n"))
    with pytest.raises(SpecError) as raised:
        load_spec(spec)
    [diagnostic] = raised.value.diagnostics
    assert (diagnostic.position.line, diagnostic.position.column, diagnostic.code) == (
        3,
        3,
        "yaml-syntax",
    )
    assert "found duplicate key 'name'" in diagnostic.message


def test_merge_keys_may_be_overridden_without_a_duplicate_error() -> None:
    text = "base: &b {x: 1, y: 2}\nitem:\n  <<: *b\n  y: 3\n"
    assert parse_yaml(text)["item"] == {"x": 1, "y": 3}


@pytest.mark.parametrize("separator", ["---\n", "...\n---\n"])
def test_a_multi_document_file_is_an_error(tmp_path: Path, separator: str) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(NORWAY + separator + NORWAY, encoding="utf-8")
    with pytest.raises(SpecError) as raised:
        load_spec(spec)
    [diagnostic] = raised.value.diagnostics
    assert diagnostic.code == "yaml-syntax"
    assert "another document" in diagnostic.message
    assert diagnostic.position.line == NORWAY.count("\n") + separator.count("\n")


def test_a_leading_document_marker_is_still_one_document(tmp_path: Path) -> None:
    spec = tmp_path / "marked.yaml"
    spec.write_text("%YAML 1.2\n---\n" + NORWAY, encoding="utf-8")
    assert load_spec(spec).spec.sites[0].addressing.x400.country == "NO"


def test_a_byte_order_mark_is_not_part_of_the_first_key(tmp_path: Path) -> None:
    spec = tmp_path / "bom.yaml"
    spec.write_bytes(b"\xef\xbb\xbf" + NORWAY.encode("utf-8"))
    assert load_spec(spec).name == "Nordmann"
