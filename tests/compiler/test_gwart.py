"""GWART selection follows Exchange's rules: best fit, then cost, then scope; stable ties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailwright.compiler.gwart import FitKind, Gwart, Route, build_gwart, fit
from mailwright.runtime.routing import AddressType, Scope
from mailwright.schema import load_specs
from tests.helpers import ROOT

SMTP, X400, MS = AddressType.SMTP, AddressType.X400, AddressType.MS


def route(  # noqa: PLR0917 - mirrors Route's fields
    kind: AddressType,
    space: str,
    gateway: str,
    cost: int = 1,
    scope: Scope = Scope.ORGANIZATION,
    site: str = "HQ",
    location: str = "",
) -> Route:
    return Route(kind, space, gateway, site, location, cost, scope)


def choose(
    routes: list[Route],
    kind: AddressType,
    address: str,
    *,
    site: str = "HQ",
    location: str = "",
    mid: str = "",
) -> str | None:
    selection = Gwart("T", tuple(routes)).select(kind, address, site, location, message_id=mid)
    return selection.chosen.gateway if selection.chosen else None


def test_exact_beats_wildcard_whatever_the_cost() -> None:
    routes = [route(SMTP, "*", "cheap", cost=1), route(SMTP, "minasi.com", "dear", cost=100)]
    assert choose(routes, SMTP, "mark@minasi.com") == "dear"


def test_more_literal_characters_fit_better() -> None:
    routes = [route(SMTP, "*.com", "broad"), route(SMTP, "*.minasi.com", "narrow", cost=50)]
    assert choose(routes, SMTP, "mark@mail.minasi.com") == "narrow"
    assert choose(routes, SMTP, "mark@example.com") == "broad"


def test_smtp_star_beats_a_type_only_space() -> None:
    routes = [route(SMTP, "", "typeonly", cost=1), route(SMTP, "*", "star", cost=10)]
    assert choose(routes, SMTP, "mark@minasi.com") == "star"


def test_lowest_cost_wins_between_equal_fits() -> None:
    routes = [route(SMTP, "*", "backup", cost=5), route(SMTP, "*", "primary", cost=1)]
    assert choose(routes, SMTP, "x@example.org") == "primary"


def test_scope_hides_a_route_from_another_site() -> None:
    routes = [
        route(SMTP, "*", "local-gw", scope=Scope.SITE, site="Paris"),
        route(SMTP, "*", "org-gw", cost=50),
    ]
    assert choose(routes, SMTP, "x@example.org", site="Paris") == "local-gw"
    assert choose(routes, SMTP, "x@example.org", site="Berlin") == "org-gw"


def test_location_scope_needs_the_same_location() -> None:
    routes = [
        route(SMTP, "*", "lab-gw", scope=Scope.LOCATION, location="Lab"),
        route(SMTP, "*", "org", cost=9),
    ]
    assert choose(routes, SMTP, "x@example.org", location="Lab") == "lab-gw"
    assert choose(routes, SMTP, "x@example.org", location="Office") == "org"


def test_no_matching_space_means_no_route() -> None:
    assert choose([route(SMTP, "minasi.com", "gw")], SMTP, "x@example.org") is None
    assert choose([route(SMTP, "*", "gw")], X400, "c=US;a= ;p=X;s=Y;") is None


def test_x400_and_ms_mail_spaces() -> None:
    routes = [
        route(X400, "c=US;a=*;p=PARTNER;", "x400-gw"),
        route(X400, "c=US;", "x400-any-us", cost=1),
        route(MS, "LEGACY/*", "ms-gw"),
    ]
    assert choose(routes, X400, "c=US;a= ;p=PARTNER;o=Sales;s=Smith;") == "x400-gw"
    assert choose(routes, X400, "c=US;a= ;p=OTHER;s=Smith;") == "x400-any-us"
    assert choose(routes, MS, "LEGACY/PO1/JSMITH") == "ms-gw"
    assert choose(routes, MS, "OTHER/PO1/JSMITH") is None


def test_percent_matches_exactly_one_character() -> None:
    assert fit(SMTP, "mail%.example.org", "a@mail1.example.org") is not None
    assert fit(SMTP, "mail%.example.org", "a@mail12.example.org") is None


def test_fit_kinds() -> None:
    kinds = [fit(SMTP, space, "a@B.org") for space in ("", "b.org", "*.org")]
    assert [f.kind if f else None for f in kinds] == [
        FitKind.TYPE_ONLY,
        FitKind.EXACT,
        FitKind.WILDCARD,
    ]


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789<>.@", min_size=1, max_size=30))
def test_equal_routes_are_spread_stably_by_message_id(message_id: str) -> None:
    routes = [route(SMTP, "*", "gw1"), route(SMTP, "*", "gw2"), route(SMTP, "*", "gw3")]
    first = choose(routes, SMTP, "x@example.org", mid=message_id)
    assert first in {"gw1", "gw2", "gw3"}
    assert all(
        choose(list(reversed(routes)), SMTP, "x@example.org", mid=message_id) == first
        for _ in range(3)
    )


def test_equal_routes_are_all_used_across_messages() -> None:
    routes = [route(SMTP, "*", "gw1"), route(SMTP, "*", "gw2")]
    chosen = {choose(routes, SMTP, "x@example.org", mid=f"<{n}@dcnw.com>") for n in range(50)}
    assert chosen == {"gw1", "gw2"}


EXAMPLES = [
    path
    for path in sorted((ROOT / "examples").rglob("*.yaml"))
    if path.read_text(encoding="utf-8").count("\norganization:")
]
GWARTS = [build_gwart(spec) for spec in load_specs(EXAMPLES)]
LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@given(
    st.sampled_from(GWARTS),
    st.builds(lambda u, d: f"{u}@{'.'.join(d)}", LABEL, st.lists(LABEL, min_size=2, max_size=4)),
    st.text(max_size=20),
)
def test_every_routable_address_selects_a_route_of_the_table(
    gwart: Gwart, address: str, message_id: str
) -> None:
    for site in {r.site for r in gwart.routes} | {""}:
        selection = gwart.select(SMTP, address, site, "", message_id=message_id)
        if selection.chosen is not None:
            assert selection.chosen in gwart.routes
            assert fit(SMTP, selection.chosen.address_space, address) is not None
