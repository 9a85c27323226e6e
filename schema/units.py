"""Durations and sizes as administrators write them: `30m`, `4h`, `5d`; `10MB`, `25 MiB`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, ByteSize, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: Any) -> Any:
    """`1h30m` -> 5400; an int is seconds already. Anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if not match or not value.strip():
            raise ValueError(
                f"'{value}' is not a duration: write seconds, or e.g. 30s, 10m, 4h, 5d, 1h30m"
            )
        return sum(int(n) * s for n, s in zip(match.groups(), _SECONDS.values(), strict=True) if n)
    return value


Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^(\d+d)?(\d+h)?(\d+m)?(\d+s)?$"},
            ],
            "description": "seconds, or a duration such as 30s, 10m, 4h, 5d, 1h30m",
        }
    ),
]

Size = Annotated[
    ByteSize,
    PlainSerializer(int, return_type=int),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$"},
            ],
            "description": "bytes, or a size such as 10MB or 25MiB",
        }
    ),
]
