"""The JSON Schema editors use: it accepts every example, and the committed copy is current."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mailwright.schema.jsonschema import spec_json_schema, spec_json_schema_text
from tests.helpers import DIAGNOSTIC_CASES, ROOT

# The organization specs among examples/ (which also holds other YAML, such as CI configs).
EXAMPLES = sorted(
    p
    for p in (ROOT / "examples").rglob("*.yaml")
    if "\norganization:" in "\n" + p.read_text(encoding="utf-8")
)

COMMITTED = ROOT / "schema" / "mailwright.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_schema_accepts_every_example(
    validator: jsonschema.Draft202012Validator, example: Path
) -> None:
    document = yaml.safe_load(example.read_text(encoding="utf-8"))
    assert errors(validator, document) == []


def test_the_schema_refuses_unknown_keys_and_bad_enums(
    validator: jsonschema.Draft202012Validator,
) -> None:
    for name in ("unknown_key.yaml", "bad_enum.yaml", "cost_range.yaml", "missing_key.yaml"):
        document = yaml.safe_load((DIAGNOSTIC_CASES / name).read_text(encoding="utf-8"))
        assert errors(validator, document), name


def test_the_committed_schema_is_the_generated_one() -> None:
    # After changing the models: .venv/bin/mailwright schema > schema/mailwright.schema.json
    assert COMMITTED.read_text(encoding="utf-8") == spec_json_schema_text()


def test_the_schema_ships_in_the_package() -> None:
    shipped = resources.files("mailwright.schema").joinpath("mailwright.schema.json")
    assert json.loads(shipped.read_text(encoding="utf-8")) == spec_json_schema()


def test_the_examples_point_editors_at_the_committed_schema() -> None:
    for example in EXAMPLES:
        first = example.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), example
        target = (example.parent / first.partition("$schema=")[2]).resolve()
        assert target == COMMITTED, example
