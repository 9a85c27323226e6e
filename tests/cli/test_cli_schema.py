"""`mailwright schema` prints the spec's JSON Schema."""

from __future__ import annotations

import json
import subprocess

import jsonschema

from mailwright.schema.jsonschema import spec_json_schema
from tests.helpers import MAILWRIGHT


def test_schema_prints_a_valid_draft_2020_12_json_schema() -> None:
    result = subprocess.run(
        [str(MAILWRIGHT), "schema"], capture_output=True, text=True, timeout=120, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == spec_json_schema()
    assert set(schema["required"]) == {"organization", "sites"}
    assert schema["additionalProperties"] is False
