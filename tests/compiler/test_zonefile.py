"""compiler/zonefile.py reads zone files as `compile` writes them exactly as dnspython does.

The plan takes a zone's resources from read_compiled_zone when it answers, from dnspython's
parser when it does not (None): so for every zone compiled from the examples, and for hand
edits of them, either it answers None or its resources are dnspython's, in dnspython's order.
"""

from __future__ import annotations

import datetime

import pytest

from mailwright.compiler import plan
from mailwright.compiler.build import compile_all, tree_files
from mailwright.compiler.zonefile import read_compiled_zone
from mailwright.schema import load_specs
from tests.helpers import CONTOSO, SEED_SPECS

SPECS = [
    SEED_SPECS,
    [CONTOSO],
]
# Hand edits (old text, new text) of dcnw.com's zone; the first line holding `old` is edited.
EDITS = [
    ("athena IN A     10.1.0.10", "athena IN A     10.1.0.11"),  # still as compile writes
    ("athena IN A     10.1.0.10", "ATHENA IN A     10.1.0.10"),  # case differs from its node?
    ("athena IN A     10.1.0.10", "athena IN a     10.1.0.10"),  # a type in lower case
    ("athena IN A     10.1.0.10", "athena IN A     10.1.0.10 ; a comment"),
    ("athena IN A     10.1.0.10", "athena IN A     10.001.0.10"),
    ("athena IN A     10.1.0.10", "athena 60 IN A  10.1.0.10"),  # a TTL of its own
    ("athena IN A     10.1.0.10", "athena IN A 10.1.0.10\nathena 30 IN A 10.1.0.12"),
    ("athena IN A     10.1.0.10", "athena IN A 10.1.0.10\nATHENA IN A 10.1.0.12"),
    ("athena IN A     10.1.0.10", "athena IN A 10.1.0.10\nathena IN A 10.1.0.10"),
    ("athena IN A     10.1.0.10", "athena IN CNAME hermes.dcnw.com."),  # beside other data?
    ("athena IN A     10.1.0.10", "athena IN AAAA 2001:db8::1"),
    ("athena IN A     10.1.0.10", "   IN A 10.1.0.10"),  # the previous owner
    ("www    IN CNAME athena.dcnw.com.", "www    IN CNAME athena"),  # relative
    ("www    IN CNAME athena.dcnw.com.", "www    IN CNAME Athena.DCNW.com."),
    ("www    IN CNAME athena.dcnw.com.", 'www    IN TXT   "a \\"quoted\\" word"'),
    ("www    IN CNAME athena.dcnw.com.", 'www    IN TXT   "one" "two"'),
    ("www    IN CNAME athena.dcnw.com.", "0 IN PTR a.dcnw.com.\n10 IN PTR b.dcnw.com."),
    ("www    IN CNAME athena.dcnw.com.", "_srv._tcp IN A 10.1.0.99"),
    ("@      IN MX    10 hermes.dcnw.com.", "@      IN MX    010 hermes.dcnw.com."),
    ("@      IN MX    10 hermes.dcnw.com.", "@      IN MX    20 hermes.dcnw.com."),
    ("    2026010100 ; serial", "    2026010199 ; serial"),
    ("    2026010100 ; serial", "    1h ; serial"),
    ("$TTL 3600", "$TTL 1h"),
    ("$ORIGIN dcnw.com.", "$ORIGIN dcnw.net."),
]


def compiled_zones() -> dict[str, str]:
    zones: dict[str, str] = {}
    for specs in SPECS:
        loaded = load_specs(specs)
        files = tree_files(compile_all(loaded, lambda _: {}, datetime.date(2026, 1, 1)))
        zones |= {name: text for name, text in files.items() if "/zones/" in name}
    return zones


ZONES = compiled_zones()


def resources(origin: str, text: str) -> tuple[list[plan.Resource], list[plan.Resource]]:
    """The plan's resources of the zone, and dnspython's."""
    return (
        list(plan._zone_resources("Org", origin, text)),
        list(plan._parsed_zone_resources("Org", origin, text)),
    )


def origin_of(name: str) -> str:
    return name.rsplit("/", 1)[1].removesuffix(".zone")


@pytest.mark.parametrize("name", sorted(ZONES))
def test_every_compiled_zone_reads_as_dnspython_reads_it(name: str) -> None:
    fast, parsed = resources(origin_of(name), ZONES[name])
    assert fast == parsed
    # A zone of the types compile derives is read without dnspython's parser.
    types = {r.name.split(" ")[1] for r in parsed if r.kind == "record"}
    if types <= {"A", "NS", "PTR", "CNAME", "MX", "TXT"}:
        assert read_compiled_zone(origin_of(name), ZONES[name]) is not None


@pytest.mark.parametrize(("old", "new"), EDITS)
def test_a_hand_edited_zone_reads_as_dnspython_reads_it_or_falls_back(old: str, new: str) -> None:
    text = ZONES["DCNW/zones/dcnw.com.zone"]
    assert old in text
    edited = text.replace(old, new, 1)
    try:
        parsed = list(plan._parsed_zone_resources("Org", "dcnw.com", edited))
    except Exception:  # dnspython refuses it: so must the plan
        assert read_compiled_zone("dcnw.com", edited) is None
        return
    assert list(plan._zone_resources("Org", "dcnw.com", edited)) == parsed
