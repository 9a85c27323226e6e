"""`graph`: the organizations as Graphviz DOT that `dot` accepts, the same text every time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mailwright.compiler.graph import quote, render_dot
from mailwright.schema import load_spec, load_specs
from tests.helpers import CONTOSO, ROOT, SEED_SPECS


def dot_program() -> str:
    """The `dot` executable; the test is skipped without it unless tools are required."""
    found = shutil.which("dot")
    if found is None:
        if os.environ.get("MAILWRIGHT_REQUIRE_TOOLS") == "1":
            pytest.fail("Graphviz `dot` is not installed and MAILWRIGHT_REQUIRE_TOOLS=1")
        pytest.skip("Graphviz `dot` is not installed")
    return found


def to_svg(text: str) -> str:
    result = subprocess.run(
        [dot_program(), "-Tsvg"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    return result.stdout


def test_the_seed_shows_every_server_with_its_facts() -> None:
    text = render_dot(load_specs(SEED_SPECS))
    assert '"DCNW/athena" [label="athena\\nathena.dcnw.com\\n10.1.0.10\\nstore\\n2 mailboxes"' in (
        text
    )
    assert '"DCNW/hermes" [label="hermes\\nhermes.dcnw.com\\n10.1.0.20\\nims"' in text
    assert '"Minasi/arlington" [label="arlington\\narlington.minasi.com\\n10.2.0.10\\n' in text
    assert 'subgraph "cluster_org/DCNW" {' in text
    assert 'subgraph "cluster_site/DCNW/Headquarters" {' in text
    assert 'subgraph "cluster_site/Minasi/Arlington" {' in text
    assert 'label="Headquarters";' in text


def test_shapes_follow_roles_and_dns_hosts_are_marked() -> None:
    text = render_dot(load_specs(SEED_SPECS))
    node = {m[2]: m[3] for m in re.finditer(r'^\s*"([^"]+/([^"]+))" \[(.*)\];$', text, re.M)}
    assert 'shape="box"' in node["athena"]
    assert 'shape="hexagon"' in node["hermes"]
    assert 'shape="ellipse"' in node["dns"]
    # Arlington is store, IMS and DNS at once: the IMS shape, the DNS mark.
    assert 'shape="hexagon"' in node["arlington"]
    for name in ("dns", "arlington"):
        assert 'peripheries="2"' in node[name]
    assert 'peripheries="1"' in node["athena"]
    assert "DNS for dcnw.com" in node["dns"]


def test_connectors_meet_at_one_shared_internet_node() -> None:
    text = render_dot(load_specs(SEED_SPECS))
    assert text.count('"internet" [label="Internet"') == 1
    assert "SMTP:* cost 1\\nscope organization" in text
    # DCNW's IMS sends out through the Internet node; Minasi's receives from it (MX).
    hermes = [line for line in text.splitlines() if '"DCNW/hermes" ' in line and "->" in line]
    arlington = [line for line in text.splitlines() if "Minasi/arlington" in line and "->" in line]
    assert any("SMTP:* cost 1" in line for line in hermes)
    assert any("MX minasi.com" in line for line in arlington)
    assert all('"internet"' in line for line in hermes + arlington)


def test_scoped_address_spaces_and_external_nameservers() -> None:
    text = render_dot([load_spec(CONTOSO)])
    assert "SMTP:*.uk cost 1\\nscope site (London)" in text
    assert "SMTP:*.jp cost 1\\nscope location (shinagawa)" in text
    assert "X400:c=GB;a=*;p=Northwind; cost 10" in text
    assert '"Contoso/ns1.dns-partner.example." [label="ns1.dns-partner.example.\\n' in text
    # sea-mx only receives: no address space, one MX edge.
    assert [line for line in text.splitlines() if '"Contoso/sea-mx" ->' in line] == [
        '  "Contoso/sea-mx" -> "internet" [label="MX contoso.com", style="dashed", '
        'color="#1f77b4", fontcolor="#1f77b4", dir="back"];'
    ]


def test_output_is_deterministic_whatever_the_order_of_specs() -> None:
    forward = render_dot(load_specs(SEED_SPECS))
    assert render_dot(load_specs(SEED_SPECS)) == forward
    assert render_dot(load_specs(list(reversed(SEED_SPECS)))) == forward
    assert forward.endswith("}\n")


def test_quote_escapes_what_dot_would_misread() -> None:
    assert quote("plain") == '"plain"'
    assert quote('say "hi"') == '"say \\"hi\\""'
    assert quote("back\\slash") == '"back\\\\slash"'
    assert quote("two\nlines") == '"two\\nlines"'
    assert quote("crlf\r\nend") == '"crlf\\nend"'


def test_dot_accepts_the_seed_and_draws_an_svg() -> None:
    svg = to_svg(render_dot(load_specs(SEED_SPECS)))
    assert svg.lstrip().startswith("<?xml")
    assert "<svg" in svg
    for text in ("athena.dcnw.com", "hermes.dcnw.com", "arlington.minasi.com", "SMTP:* cost 1"):
        assert text in svg


def test_dot_accepts_awkward_names(tmp_path: Path) -> None:
    spec = (ROOT / "examples/seed/dcnw.yaml").read_text(encoding="utf-8")
    spec = spec.replace(
        "  name: DCNW\n", "  name: DCNW\n  display_name: 'Say \"hi\" \\ to {all} <a>; x -> y'\n"
    )
    path = tmp_path / "dcnw.yaml"
    path.write_text(spec, encoding="utf-8")
    text = render_dot([load_spec(path)])
    assert '"DCNW (Say \\"hi\\" \\\\ to {all} <a>; x -> y)\\ndcnw.com"' in text
    svg = to_svg(text)
    assert "Say &quot;hi&quot; \\ to {all} &lt;a&gt;; x &#45;&gt; y" in svg


def test_dot_accepts_several_organizations_together() -> None:
    svg = to_svg(render_dot([*load_specs(SEED_SPECS), load_spec(CONTOSO)]))
    assert svg.count(">Internet</text>") == 1
