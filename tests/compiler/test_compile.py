"""`compile`: deterministic artifacts, golden files for the seed, and the route the seed tells."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailwright.compiler.build import compile_specs
from mailwright.compiler.gal import build_gal
from mailwright.compiler.route import explain_route
from mailwright.schema import load_specs
from tests.helpers import EPOCH, GOLDEN, MAILWRIGHT, ROOT, SEED_SPECS, assert_golden_tree, tree


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def compile_seed(out: Path, specs: list[Path] = SEED_SPECS) -> dict[str, bytes]:
    subprocess.run(
        [MAILWRIGHT, "compile", *map(str, specs), "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return tree(out)


def test_compiling_twice_is_byte_identical(tmp_path: Path) -> None:
    first = compile_seed(tmp_path / "a")
    again = compile_seed(tmp_path / "a")
    elsewhere = compile_seed(tmp_path / "b")
    assert first == again == elsewhere


def reorder(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: reorder(node[k]) for k in reversed(list(node))}
    if isinstance(node, list):
        return [reorder(x) for x in node]
    return node


def without_sources(files: dict[str, bytes]) -> dict[str, Any]:
    """Manifests name the spec files and their hashes, which differ by design."""
    result: dict[str, Any] = {}
    for name, content in files.items():
        if name.endswith("manifest.json"):
            data = json.loads(content)
            data.pop("sources", None)
            data.get("artifacts", {}).pop("manifest.json", None)
            data.pop("organizations", None)
            result[name] = data
        else:
            result[name] = content
    return result


def test_mapping_order_does_not_change_artifacts(tmp_path: Path) -> None:
    shuffled = []
    for spec in SEED_SPECS:
        copy = tmp_path / spec.name
        copy.write_text(yaml.safe_dump(reorder(yaml.safe_load(spec.read_text())), sort_keys=False))
        shuffled.append(copy)
    assert without_sources(compile_seed(tmp_path / "a")) == without_sources(
        compile_seed(tmp_path / "b", shuffled)
    )


def test_seed_artifacts_match_golden_files(tmp_path: Path) -> None:
    subprocess.run(
        [
            MAILWRIGHT,
            "compile",
            "examples/seed/dcnw.yaml",
            "examples/seed/minasi.yaml",
            "--out",
            str(tmp_path),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    assert_golden_tree(GOLDEN / "seed", tree(tmp_path), "compiled")


def test_seed_route_to_mark_goes_through_hermes_to_arlington() -> None:
    result = explain_route(load_specs(SEED_SPECS), "mark@minasi.com", "athena")
    assert result.routable
    assert result.selection is not None and result.selection.chosen is not None
    assert result.selection.chosen.gateway == "hermes"
    assert [(h.host, h.addresses) for h in result.mx] == [("arlington.minasi.com.", ("10.2.0.10",))]
    assert result.path == ["athena", "hermes"]


def run_route(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILWRIGHT, "route", *args, *map(str, SEED_SPECS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_route_command_text_and_json() -> None:
    done = run_route("mark@minasi.com", "--from", "athena")
    assert done.returncode == 0, done.stderr
    assert "* SMTP:* via hermes" in done.stdout
    assert "MX: 10 arlington.minasi.com. -> 10.2.0.10" in done.stdout
    as_json = json.loads(run_route("mark@minasi.com", "--from", "athena", "--json").stdout)
    assert as_json["chosen"]["gateway"] == "hermes"
    assert as_json["routable"] is True


def test_route_inside_the_organization_uses_the_gal() -> None:
    done = run_route("X400:c=US;a= ;p=DCNW;o=Headquarters;s=Doe;g=Jane;", "--from", "hermes")
    assert done.returncode == 0, done.stderr
    assert "home server athena" in done.stdout
    assert "path:      hermes -> athena" in done.stdout
    assert run_route("DCNW/HQ/PAT", "--from", "athena").returncode == 0


def test_unknown_recipient_in_an_owned_domain_is_not_routable() -> None:
    done = run_route("nobody@dcnw.com", "--from", "athena")
    assert done.returncode == 1
    assert "recipient not found" in done.stdout


def test_unknown_server_is_a_clear_error() -> None:
    done = run_route("mark@minasi.com", "--from", "zeus")
    assert done.returncode == 1
    assert "no server 'zeus'" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_gal_proxy_resolves_back_to_its_recipient() -> None:
    for loaded in load_specs(SEED_SPECS):
        gal = build_gal(loaded)
        for entry in gal:
            for proxy in entry.proxies:
                assert gal.lookup(proxy.type, proxy.address.upper()) is entry


def test_pop3_inheritance_in_the_gal(tmp_path: Path) -> None:
    gal = {e.row.alias: e.row for e in build_gal(load_specs(SEED_SPECS)[1])}
    assert gal["mark"].pop3.enabled is True
    assert gal["paula"].pop3.enabled is False
    spec = yaml.safe_load(SEED_SPECS[1].read_text())
    server = spec["sites"][0]["servers"][0]
    server["protocols"] = {"pop3": {"enabled": False}}
    spec["mailboxes"][0]["protocols"] = {"pop3": {"enabled": True}}
    path = tmp_path / "minasi.yaml"
    path.write_text(yaml.safe_dump(spec))
    # Exchange: a server with POP3 disabled disables it for all its mailboxes.
    assert all(not e.row.pop3.enabled for e in build_gal(load_specs([path])[0]))


def test_compile_refuses_an_invalid_spec(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("organization: {name: X}\n")
    done = subprocess.run(
        [MAILWRIGHT, "compile", str(bad), "--out", str(tmp_path / "out")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert f"{bad}:1:15: error: missing required key 'domains'" in done.stderr
    assert not (tmp_path / "out").exists()


def test_compile_writes_the_library_api(tmp_path: Path) -> None:
    compiled = compile_specs(load_specs(SEED_SPECS), tmp_path)
    assert [a.organization for a in compiled] == ["DCNW", "Minasi"]
    hosts = json.loads((tmp_path / "DCNW/hosts/athena.json").read_text())
    assert [m["alias"] for m in hosts["mailboxes"]] == ["jane", "pat"]
    assert hosts["server"]["services"] == {"pop3": 110, "transfer": 7025}
    assert json.loads((tmp_path / "DCNW/hosts/hermes.json").read_text())["mailboxes"] == []
