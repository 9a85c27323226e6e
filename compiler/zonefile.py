"""The records of a zone file as `compile` writes it, read without dnspython's parser.

A first plan of 100,000 mailboxes reads 101 zones (2,200 records): through dns.zone.from_text
that took most of a second. `compile` writes each record in canonical presentation form
(zones.py: `rdata.to_text()`, names absolute; owners relative to $ORIGIN), so for the types it
derives (A, NS, PTR, CNAME, MX, TXT) reading them back takes a strict check of the layout and
no parsing. Anything else (another type, an escape, a line of another shape: a zone edited by
hand) answers None, and the caller reads the zone with dnspython. Otherwise the answer is what
dnspython's zone gives: nodes in DNS name order (RFC 4034 §6.1, as dns.name compares them),
rdatasets at a node in the order they first appear, records in file order, each rdataset's TTL
the least of its records'.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

_LABEL = r"[A-Za-z0-9_-]{1,63}"
_OWNER = re.compile(rf"@|{_LABEL}(?:\.{_LABEL})*")  # relative, as zones.py writes owners
_NAME = re.compile(rf"(?:{_LABEL}\.)+")  # absolute, as names in rdata are
_NUMBER = r"(0|[1-9][0-9]{0,9})"
_TTL = re.compile(r"\$TTL " + _NUMBER)
_RECORD = re.compile(rf"(\S+) +(?:{_NUMBER} +)?IN ([A-Z]+) +(\S.*?) *")
_SOA_HEAD = re.compile(r"@ +(?:[0-9]+ +)?IN SOA +(\S+) (\S+) \(")
_SOA_FIELD = re.compile(rf" +{_NUMBER} +;.*")
_TXT = re.compile(r'"[ !#-\[\]-~]{0,255}"(?: "[ !#-\[\]-~]{0,255}")*')  # printable, no " or \
_MX = re.compile(rf"{_NUMBER} (\S+)")
SOA_FIELDS = 5  # serial, refresh, retry, expire, minimum (RFC 1035 §3.3.13)
RECORDS_FROM = 4 + 1 + SOA_FIELDS + 1  # comments, $ORIGIN, $TTL; the SOA block
MAX_U32 = 2**32 - 1
MAX_TTL = 2**31 - 1  # RFC 2181 §8


@dataclass
class _Node:
    name: str  # as first spelt
    rdatasets: dict[str, tuple[list[str], int]] = field(default_factory=dict)  # type: rdatas, ttl
    seen: set[str] = field(default_factory=set)  # "TYPE rdata", compared case-blind


@dataclass
class ZoneRecords:
    """The SOA's serial; the other records as (owner, type, rdata, ttl), in dnspython's order."""

    serial: int
    records: list[tuple[str, str, str, int]]


def read_compiled_zone(origin: str, text: str) -> ZoneRecords | None:
    """The zone's records, or None when `text` is not laid out as `compile` writes it."""
    lines = text.split("\n")
    ttl = _TTL.fullmatch(lines[3]) if len(lines) > RECORDS_FROM else None
    if not (lines[0].startswith(";") and lines[1].startswith(";")) or lines[-1] != "":
        return None
    if ttl is None or lines[2] != f"$ORIGIN {origin}." or int(ttl.group(1)) > MAX_TTL:
        return None
    serial = _soa_serial(lines[4:RECORDS_FROM])
    nodes: dict[str, _Node] = {}
    for line in lines[RECORDS_FROM:-1]:
        if serial is None or not _add_record(nodes, origin, line, int(ttl.group(1))):
            return None
    return None if serial is None else ZoneRecords(serial, _in_dns_order(nodes))


def _soa_serial(lines: list[str]) -> int | None:
    """The serial of the SOA block: its head, five numbers a line, a closing parenthesis."""
    head = _SOA_HEAD.fullmatch(lines[0])
    if head is None or not all(_absolute(name) for name in head.groups()) or lines[-1] != ")":
        return None
    numbers = [_SOA_FIELD.fullmatch(line) for line in lines[1:-1]]
    values = [int(found.group(1)) for found in numbers if found]
    if len(values) != SOA_FIELDS or max(values) > MAX_U32:
        return None
    return values[0]


def _add_record(nodes: dict[str, _Node], origin: str, line: str, default_ttl: int) -> bool:
    """The record of one line added to its node; False when the line is not one `compile`
    writes, or when dnspython would do more than this module does (a name spelt two ways, a
    record that dnspython folds into another, CNAME and other data at one name)."""
    found = _RECORD.fullmatch(line)
    if found is None:
        return False
    owner, ttl_text, kind, rdata = found.groups()
    name = f"{origin}." if owner == "@" else f"{owner}.{origin}."
    ttl = default_ttl if ttl_text is None else int(ttl_text)
    if not (_OWNER.fullmatch(owner) and _absolute(name) and ttl <= MAX_TTL):
        return False
    node = nodes.setdefault(name.lower(), _Node(name))
    key = f"{kind} {rdata}".lower()
    cname = "CNAME" in node.rdatasets or (kind == "CNAME" and node.rdatasets)
    if node.name != name or key in node.seen or cname or not _canonical(kind, rdata):
        return False
    node.seen.add(key)
    rdatas, least = node.rdatasets.get(kind, ([], ttl))
    rdatas.append(rdata)
    node.rdatasets[kind] = (rdatas, min(least, ttl))
    return True


def _canonical(kind: str, rdata: str) -> bool:
    """Whether `rdata` of type `kind` is in the form dnspython's to_text gives it."""
    if kind == "A":
        try:
            return str(ipaddress.IPv4Address(rdata)) == rdata
        except ValueError:
            return False
    if kind in ("NS", "PTR", "CNAME"):
        return _absolute(rdata)
    if kind == "MX":
        found = _MX.fullmatch(rdata)
        return found is not None and int(found.group(1)) < 2**16 and _absolute(found.group(2))
    return kind == "TXT" and _TXT.fullmatch(rdata) is not None


def _absolute(name: str) -> bool:
    # RFC 1035 §2.3.4: 255 octets in wire form, one more than the text with its final dot.
    return len(name) < 255 and _NAME.fullmatch(name) is not None


def _in_dns_order(nodes: dict[str, _Node]) -> list[tuple[str, str, str, int]]:
    """dns.name's order: label by label from the root, case-blind; the apex first."""
    records = []
    for key in sorted(nodes, key=lambda name: name.split(".")[::-1]):
        node = nodes[key]
        for kind, (rdatas, ttl) in node.rdatasets.items():
            records += [(node.name, kind, rdata, ttl) for rdata in rdatas]
    return records
