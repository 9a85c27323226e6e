"""The spec's JSON Schema, for editors running yaml-language-server."""

from __future__ import annotations

import json
from typing import Any

from mailwright.schema.models import OrganizationSpec

SCHEMA_ID = "https://mailwright.dev/schema/organization.json"


def spec_json_schema() -> dict[str, Any]:
    schema = OrganizationSpec.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def spec_json_schema_text() -> str:
    return json.dumps(spec_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
