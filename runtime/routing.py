"""Address types and Exchange's route selection over GWART rows, shared by the spec (which
validates address types and scopes), the compiler (`route`, the GWART artifact) and the
runtime's MTA and IMS, which read the rows from the compiled artifacts. Standard library only:
a host process imports this, never the spec loader or pydantic.

The whole address is matched against each address space; best fit wins first (exact, then
wildcard with more literal characters, then type-only), then lowest cost; a site- or
location-scoped route is visible only to servers in that site or location. Equal routes are
spread by a stable hash of the message id, never at random.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class AddressType(enum.StrEnum):
    SMTP = "SMTP"
    X400 = "X400"
    MS = "MS"


# Who may use a route: every server, those of its site, or those of its location. (A comment,
# not a docstring: the spec's JSON schema would carry a docstring as the enum's description.)
class Scope(enum.StrEnum):
    ORGANIZATION = "organization"
    SITE = "site"
    LOCATION = "location"


X400_KEYS = ("c", "a", "p", "o", "ou1", "ou2", "ou3", "ou4", "cn", "s", "g", "i", "q")


def parse_x400(text: str) -> dict[str, str]:
    """`c=US;a= ;p=DCNW;o=HQ;s=Doe;g=Jane;` as attributes; raises ValueError when malformed."""
    attributes: dict[str, str] = {}
    for part in text.rstrip(";").split(";"):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in X400_KEYS:
            raise ValueError(f"'{part}' is not an X.400 attribute (one of {', '.join(X400_KEYS)})")
        if key in attributes:
            raise ValueError(f"X.400 attribute '{key}' is given twice")
        attributes[key] = value
    return attributes


def format_x400(attributes: dict[str, str]) -> str:
    return "".join(f"{k}={attributes[k]};" for k in X400_KEYS if k in attributes)


SCOPE_RANK = {Scope.LOCATION: 0, Scope.SITE: 1, Scope.ORGANIZATION: 2}


class FitKind(enum.IntEnum):
    TYPE_ONLY = 0
    WILDCARD = 1
    EXACT = 2


@dataclass(frozen=True, order=True)
class Fit:
    kind: FitKind
    literals: int

    def __str__(self) -> str:
        if self.kind is FitKind.TYPE_ONLY:
            return "type-only"
        return "exact" if self.kind is FitKind.EXACT else f"wildcard ({self.literals} literal)"


@dataclass(frozen=True, order=True)
class Route:
    type: AddressType
    address_space: str  # "" for a type-only space
    gateway: str  # the connector's server; "" for a local route
    site: str
    location: str
    cost: int
    scope: Scope
    local: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "address_space": self.address_space,
            "gateway": self.gateway,
            "site": self.site,
            "location": self.location,
            "cost": self.cost,
            "scope": self.scope.value,
            "local": self.local,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Route:
        return cls(**{**data, "type": AddressType(data["type"]), "scope": Scope(data["scope"])})

    def visible_from(self, site: str, location: str) -> bool:
        if self.scope is Scope.SITE:
            return site == self.site
        if self.scope is Scope.LOCATION:
            return site == self.site and bool(location) and location == self.location
        return True


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    parts = ("." if c == "%" else ".*" if c == "*" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _literals(pattern: str) -> int:
    return sum(c not in "*%" for c in pattern)


def _matches(pattern: str, text: str) -> bool:
    return _glob(pattern).fullmatch(text) is not None


def fit(kind: AddressType, space: str, address: str) -> Fit | None:
    """How well `address` fits address space `space` of its type, or None when it does not."""
    if not space:
        return Fit(FitKind.TYPE_ONLY, 0)
    pieces = _pieces(kind, space, address)
    if pieces is None or not all(_matches(p, t) for p, t in pieces[0]):
        return None
    pairs, partial = pieces
    wild = partial or any(c in "*%" for p, _ in pairs for c in p)
    return Fit(FitKind.WILDCARD if wild else FitKind.EXACT, sum(_literals(p) for p, _ in pairs))


def _pieces(
    kind: AddressType, space: str, address: str
) -> tuple[list[tuple[str, str]], bool] | None:
    """The (pattern, text) pairs to compare, and whether the space leaves parts of the address
    unsaid (a partial space fits like a wildcard); None when the address lacks a part."""
    if kind is AddressType.SMTP:
        # A space without "@" is a domain: compared with the address's domain.
        return [(space, address if "@" in space else address.rpartition("@")[2])], False
    if kind is AddressType.X400:
        try:
            wanted, have = parse_x400(space), parse_x400(address)
        except ValueError:
            return None
        if not wanted.keys() <= have.keys():
            return None
        return [(v, have[k]) for k, v in wanted.items()], wanted.keys() != have.keys()
    wanted_parts, have_parts = space.split("/"), address.split("/")
    if space == "*":
        return [("*", address)], True
    if len(wanted_parts) > len(have_parts):
        return None
    return list(zip(wanted_parts, have_parts, strict=False)), len(wanted_parts) < len(have_parts)


@dataclass(frozen=True)
class Candidate:
    route: Route
    fit: Fit | None
    visible: bool

    @property
    def eligible(self) -> bool:
        return self.fit is not None and self.visible

    def rank(self) -> tuple[int, int, int, int]:
        assert self.fit is not None
        return (-self.fit.kind, -self.fit.literals, self.route.cost, SCOPE_RANK[self.route.scope])

    def why(self) -> str:
        if self.fit is None:
            return "address space does not match"
        if not self.visible:
            return f"{self.route.scope.value}-scoped route not visible from here"
        return f"fit {self.fit}, cost {self.route.cost}, scope {self.route.scope.value}"


@dataclass(frozen=True)
class Selection:
    type: AddressType
    address: str
    candidates: tuple[Candidate, ...]  # best first; ineligible ones last
    chosen: Route | None
    tied: tuple[Route, ...]  # the equal best routes the message id chose among


def select(
    routes: Iterable[Route],
    kind: AddressType,
    address: str,
    site: str,
    location: str,
    *,
    message_id: str = "",
) -> Selection:
    candidates = [
        Candidate(r, fit(kind, r.address_space, address), r.visible_from(site, location))
        for r in routes
        if r.type is kind
    ]
    eligible = sorted((c for c in candidates if c.eligible), key=Candidate.rank)
    others = [c for c in candidates if not c.eligible]
    if not eligible:
        return Selection(kind, address, tuple(others), None, ())
    best = [c.route for c in eligible if c.rank() == eligible[0].rank()]
    tied = tuple(sorted(best, key=lambda r: (r.gateway, r.address_space)))
    chosen = tied[_spread(message_id, len(tied))]
    return Selection(kind, address, (*eligible, *others), chosen, tied if len(tied) > 1 else ())


def _spread(message_id: str, count: int) -> int:
    """A stable choice among equal routes: the same message always takes the same one."""
    digest = hashlib.sha256(message_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count
