"""Address space patterns: which foreign addresses a connector carries.

Patterns use Exchange's wildcards: `*` stands for any run of characters, `%` for exactly one.
"""

from __future__ import annotations

import re

from mailwright.runtime.routing import AddressType, parse_x400
from mailwright.schema.addressing import MS_PART_MAX

_SMTP_DOMAIN_PATTERN = re.compile(r"^(\*|[A-Za-z0-9*%-]+(\.[A-Za-z0-9*%-]+)*)$")
_SMTP_LOCAL_PATTERN = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+$")
_MS_PART_PATTERN = re.compile(r"^[A-Za-z0-9_*%-]+$")


def check_pattern(kind: AddressType, pattern: str) -> str | None:
    """Why `pattern` is not a valid address space of `kind`, or None when it is."""
    if not pattern:
        return "an address space pattern cannot be empty (leave it out for a type-only space)"
    if kind is AddressType.SMTP:
        local, at, domain = pattern.rpartition("@")
        if not _SMTP_DOMAIN_PATTERN.match(domain) or (at and not _SMTP_LOCAL_PATTERN.match(local)):
            return (
                f"'{pattern}' is not an SMTP address space: a domain such as minasi.com or "
                "*.minasi.com, optionally local-part@ in front; wildcards * and %"
            )
        return None
    if kind is AddressType.X400:
        try:
            parse_x400(pattern)
        except ValueError as exc:
            return f"'{pattern}' is not an X.400 address space: {exc}"
        return None
    parts = pattern.split("/")
    if pattern == "*" or (
        len(parts) <= 3 and all(_MS_PART_PATTERN.match(p) and len(p) <= MS_PART_MAX for p in parts)
    ):
        return None
    return (
        f"'{pattern}' is not an MS Mail address space: NETWORK/POSTOFFICE/MAILBOX (or a leading "
        "part of it), each 1-10 characters, wildcards * and %"
    )
