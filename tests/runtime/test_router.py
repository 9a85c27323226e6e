"""The MTA's routing decisions, read from the seed's compiled artifacts only."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwright.compiler.build import compile_specs
from mailwright.runtime.contract import read_host_config
from mailwright.runtime.mta.router import Decision, Disposition, Router
from mailwright.schema import load_specs
from tests.helpers import SEED_SPECS


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    compile_specs(load_specs(SEED_SPECS), out)
    return out


def router(tree: Path, organization: str, server: str) -> Router:
    host = read_host_config(tree / organization / "hosts" / f"{server}.json")
    return Router.load(host, tree / organization)


def test_foreign_smtp_goes_to_the_gateway(tree: Path) -> None:
    decision = router(tree, "DCNW", "athena").route("SMTP", "mark@minasi.com")
    assert decision == Decision(
        Disposition.TRANSFER, "hermes", reason="GWART: SMTP:* via hermes cost 1"
    )
    assert (
        router(tree, "DCNW", "hermes").route("SMTP", "mark@minasi.com").disposition
        is Disposition.GATEWAY
    )


@pytest.mark.parametrize(
    "kind,address",
    [
        ("SMTP", "JANE@dcnw.com"),
        ("smtp", "jane.doe@DCNW.com"),
        ("X400", "c=US;a= ;p=DCNW;o=Headquarters;s=Doe;g=Jane;"),
        ("MS", "dcnw/hq/jane"),
    ],
)
def test_every_proxy_type_finds_the_home_server(tree: Path, kind: str, address: str) -> None:
    assert router(tree, "DCNW", "hermes").route(kind, address) == Decision(
        Disposition.TRANSFER, "athena", "jane", reason="GAL: jane on athena"
    )
    assert router(tree, "DCNW", "athena").route(kind, address).disposition is Disposition.LOCAL


def test_unknown_recipient_in_an_owned_domain(tree: Path) -> None:
    decision = router(tree, "DCNW", "athena").route("SMTP", "nobody@dcnw.com")
    assert (decision.disposition, decision.status) == (Disposition.NDR, "5.1.1")


def test_no_route(tree: Path) -> None:
    decision = router(tree, "Minasi", "arlington").route("X400", "c=FR;a= ;p=X;s=Y;")
    assert (decision.disposition, decision.status) == (Disposition.NDR, "5.4.4")
    assert router(tree, "DCNW", "athena").route("FAX", "123").status == "5.1.3"
