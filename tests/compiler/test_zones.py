"""DNS zone files: what BIND and dnspython load, what the seed story needs, stable serials."""

from __future__ import annotations

import datetime
import re
import subprocess
import textwrap
from pathlib import Path

import dns.name
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import dns.zone
import pytest

from mailwright.compiler.zones import ZoneError, ZoneFile, render_zones
from mailwright.schema import LoadedSpec, load_spec
from tests.helpers import GOLDEN, SEED_SPECS, assert_golden, require_tool

TODAY = datetime.date(2026, 1, 1)

# Every feature at once; all MX and in-zone NS targets are in their zone, so that
# `named-checkzone -i full` needs no lookups on the network.
CONTOSO = """\
organization: {name: Contoso, domains: [contoso.com, contoso.net]}
sites:
  - name: HQ
    servers:
      - name: mx1
        fqdn: mx1.contoso.com
        ipv4: 10.9.0.25
        roles: [ims]
        ims:
          address_spaces:
            - {type: SMTP, pattern: "*", cost: 2}
            - {type: X400, cost: 1}
          domains: [contoso.com]
      - name: mx2
        fqdn: mx2.contoso.com
        ipv4: 10.9.0.26
        roles: [ims]
        ims:
          address_spaces: [{type: SMTP, pattern: "*", cost: 2}]
          transfer_mode: inbound_only
          domains: [contoso.com]
      - name: out
        fqdn: out.contoso.com
        ipv4: 10.9.1.7
        roles: [ims]
        ims: {transfer_mode: outbound_only}
      - name: bare
        fqdn: bare.contoso.net
        ipv4: 10.9.0.100
        roles: [ims]
        ims: {domains: [contoso.net]}
      - {name: ns1, fqdn: ns1.contoso.com, ipv4: 10.9.0.53, roles: [dns]}
dns:
  - domain: contoso.com
    nameservers: [ns1, ns.example.net.]
    soa: {contact: john.doe@contoso.com, refresh: 2h}
    records:
      - {name: www, type: A, value: 10.9.0.80, ttl: 300}
      - {name: "@", type: MX, value: 30 www}
  - domain: contoso.net
    ttl: 600
    nameservers: [ns1]
"""

# One server that is IMS and DNS at once; {ims} is its `ims:` block, if any.
SOLO = """\
organization: {{name: Solo, domains: [solo.com]}}
sites:
  - name: HQ
    servers:
      - name: gw
        fqdn: gw.solo.com
        ipv4: 10.8.0.1
        roles: [ims, dns]
        {ims}
dns:
  - {{domain: solo.com, nameservers: [gw]}}
"""


@pytest.fixture(scope="session")
def named_checkzone() -> str:
    return require_tool("named-checkzone", "bind9-utils")


@pytest.fixture(scope="session")
def seed_zones() -> list[ZoneFile]:
    return [z for seed in SEED_SPECS for z in render_zones(load_spec(seed), {}, TODAY)]


def load_text(tmp_path: Path, text: str) -> LoadedSpec:
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return load_spec(path)


def by_origin(zones: list[ZoneFile]) -> dict[str, ZoneFile]:
    return {z.origin: z for z in zones}


def parse(zone: ZoneFile, tmp_path: Path) -> dns.zone.Zone:
    path = tmp_path / f"{zone.origin}.zone"
    path.write_text(zone.text, encoding="utf-8")
    return dns.zone.from_file(str(path), zone.origin, relativize=False)


def rdata_texts(zone: ZoneFile, tmp_path: Path, name: str, rdtype: str) -> list[str]:
    parsed = parse(zone, tmp_path)
    return sorted(r.to_text() for r in parsed.find_rdataset(dns.name.from_text(name), rdtype))


def check_with_bind(tool: str, zone: ZoneFile, tmp_path: Path) -> None:
    path = tmp_path / f"{zone.origin}.zone"
    path.write_text(zone.text, encoding="utf-8")
    result = subprocess.run(
        [tool, "-i", "full", zone.origin, str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout.splitlines()[-1]


# --- the seed story -----------------------------------------------------------------------------


def test_seed_organizations_have_forward_and_reverse_zones(seed_zones: list[ZoneFile]) -> None:
    assert [z.origin for z in seed_zones] == [
        "0.1.10.in-addr.arpa",
        "dcnw.com",
        "0.2.10.in-addr.arpa",
        "minasi.com",
    ]


def test_named_checkzone_accepts_every_seed_zone(
    seed_zones: list[ZoneFile], named_checkzone: str, tmp_path: Path
) -> None:
    for zone in seed_zones:
        check_with_bind(named_checkzone, zone, tmp_path)


def test_dnspython_loads_every_seed_zone(seed_zones: list[ZoneFile], tmp_path: Path) -> None:
    for zone in seed_zones:
        parsed = parse(zone, tmp_path)
        soa = parsed.get_soa()
        assert soa.serial == zone.serial == 2026010100


def test_minasi_mx_points_at_arlington(seed_zones: list[ZoneFile], tmp_path: Path) -> None:
    minasi = by_origin(seed_zones)["minasi.com"]
    rdataset = parse(minasi, tmp_path).find_rdataset("minasi.com.", "MX")
    exchanges = [r.exchange for r in rdataset if isinstance(r, dns.rdtypes.ANY.MX.MX)]
    assert exchanges == [dns.name.from_text("arlington.minasi.com.")]
    assert rdata_texts(minasi, tmp_path, "arlington.minasi.com.", "A") == ["10.2.0.10"]


def test_dcnw_spf_lists_hermes(seed_zones: list[ZoneFile], tmp_path: Path) -> None:
    dcnw = by_origin(seed_zones)["dcnw.com"]
    rdataset = parse(dcnw, tmp_path).find_rdataset("dcnw.com.", "TXT")
    texts = [b"".join(r.strings) for r in rdataset if isinstance(r, dns.rdtypes.ANY.TXT.TXT)]
    assert texts == [b"v=spf1 ip4:10.1.0.20 -all"]


def test_dcnw_zone_has_derived_and_extra_records(
    seed_zones: list[ZoneFile], tmp_path: Path
) -> None:
    dcnw = by_origin(seed_zones)["dcnw.com"]
    assert rdata_texts(dcnw, tmp_path, "dcnw.com.", "MX") == ["10 hermes.dcnw.com."]
    assert rdata_texts(dcnw, tmp_path, "dcnw.com.", "NS") == ["dns.dcnw.com."]
    assert rdata_texts(dcnw, tmp_path, "www.dcnw.com.", "CNAME") == ["athena.dcnw.com."]
    soa = parse(dcnw, tmp_path).get_soa()
    assert (str(soa.mname), str(soa.rname)) == ("dns.dcnw.com.", "hostmaster.dcnw.com.")


def test_reverse_zone_points_back_at_every_server(
    seed_zones: list[ZoneFile], tmp_path: Path
) -> None:
    reverse = by_origin(seed_zones)["0.1.10.in-addr.arpa"]
    names = {
        "10.0.1.10.in-addr.arpa.": "athena.dcnw.com.",
        "20.0.1.10.in-addr.arpa.": "hermes.dcnw.com.",
        "53.0.1.10.in-addr.arpa.": "dns.dcnw.com.",
    }
    for owner, target in names.items():
        assert rdata_texts(reverse, tmp_path, owner, "PTR") == [target]
    assert rdata_texts(reverse, tmp_path, "0.1.10.in-addr.arpa.", "NS") == ["dns.dcnw.com."]


def test_golden_seed_zones(seed_zones: list[ZoneFile]) -> None:
    # The compiled seed's golden tree (tests/golden/seed/<organization>/zones) holds them.
    golden = {p.name: p for p in (GOLDEN / "seed").glob("*/zones/*.zone")}
    assert sorted(golden) == sorted(f"{z.origin}.zone" for z in seed_zones)
    for zone in seed_zones:
        assert_golden(golden[f"{zone.origin}.zone"], zone.text, f"rendered {zone.origin}")


# --- determinism and serials --------------------------------------------------------------------


def test_rendering_twice_gives_the_same_files() -> None:
    loaded = load_spec(SEED_SPECS[0])
    assert render_zones(loaded, {}, TODAY) == render_zones(loaded, {}, TODAY)


def test_text_uses_newlines_only(seed_zones: list[ZoneFile]) -> None:
    for zone in seed_zones:
        assert "\r" not in zone.text
        assert zone.text.endswith("\n")
        assert not any(line != line.rstrip() for line in zone.text.splitlines())


def test_serial_kept_when_nothing_changed(seed_zones: list[ZoneFile]) -> None:
    previous = {z.origin: (z.content_hash, z.serial) for z in seed_zones}
    later = datetime.date(2026, 3, 4)
    again = [z for seed in SEED_SPECS for z in render_zones(load_spec(seed), previous, later)]
    assert again == seed_zones


def test_serial_bumped_when_records_change(tmp_path: Path) -> None:
    first = by_origin(render_zones(load_text(tmp_path, CONTOSO), {}, TODAY))
    previous = {origin: (z.content_hash, z.serial) for origin, z in first.items()}
    changed = CONTOSO.replace("10.9.0.80, ttl: 300", "10.9.0.81, ttl: 300")
    second = by_origin(render_zones(load_text(tmp_path, changed), previous, TODAY))
    assert second["contoso.com"].content_hash != first["contoso.com"].content_hash
    assert second["contoso.com"].serial == 2026010101
    assert second["contoso.net"] == first["contoso.net"]


def test_serial_only_grows(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, CONTOSO)
    fresh = by_origin(render_zones(loaded, {}, TODAY))["contoso.com"]
    ahead = {"contoso.com": ("stale", 2026120599)}
    assert by_origin(render_zones(loaded, ahead, TODAY))["contoso.com"].serial == 2026120600
    assert fresh.serial == 2026010100


def test_serial_restarts_on_a_new_day(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, CONTOSO)
    previous = {"contoso.com": ("stale", 2026010107)}
    zone = by_origin(render_zones(loaded, previous, datetime.date(2026, 1, 2)))["contoso.com"]
    assert zone.serial == 2026010200
    assert f"{zone.serial} ; serial" in zone.text


def test_content_hash_ignores_the_serial(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, CONTOSO)
    today = by_origin(render_zones(loaded, {}, TODAY))["contoso.com"]
    later = by_origin(render_zones(loaded, {}, datetime.date(2027, 6, 1)))["contoso.com"]
    assert today.content_hash == later.content_hash
    assert today.text != later.text


# --- derived records ----------------------------------------------------------------------------


@pytest.fixture
def contoso(tmp_path: Path) -> dict[str, ZoneFile]:
    return by_origin(render_zones(load_text(tmp_path, CONTOSO), {}, TODAY))


def test_contoso_zones_pass_named_checkzone(
    contoso: dict[str, ZoneFile], named_checkzone: str, tmp_path: Path
) -> None:
    assert sorted(contoso) == [
        "0.9.10.in-addr.arpa",
        "1.9.10.in-addr.arpa",
        "contoso.com",
        "contoso.net",
    ]
    for zone in contoso.values():
        check_with_bind(named_checkzone, zone, tmp_path)


def test_mx_preference_is_ten_times_the_cheapest_smtp_space(
    contoso: dict[str, ZoneFile], tmp_path: Path
) -> None:
    # X.400 costs do not count; equal SMTP costs give equal preferences; outbound_only: no MX.
    assert rdata_texts(contoso["contoso.com"], tmp_path, "contoso.com.", "MX") == [
        "20 mx1.contoso.com.",
        "20 mx2.contoso.com.",
        "30 www.contoso.com.",
    ]


def test_ims_receives_only_its_domains(contoso: dict[str, ZoneFile], tmp_path: Path) -> None:
    assert rdata_texts(contoso["contoso.net"], tmp_path, "contoso.net.", "MX") == [
        "10 bare.contoso.net."
    ]


def test_spf_lists_outbound_ims_addresses_in_order(contoso: dict[str, ZoneFile]) -> None:
    for origin in ("contoso.com", "contoso.net"):
        assert '"v=spf1 ip4:10.9.0.25 ip4:10.9.0.100 ip4:10.9.1.7 -all"' in contoso[origin].text


def test_ims_role_without_settings_uses_the_connector_defaults(tmp_path: Path) -> None:
    # No `ims:` block: inbound and outbound for every owned domain, no address spaces.
    zones = by_origin(render_zones(load_text(tmp_path, SOLO.format(ims="")), {}, TODAY))
    assert "@  IN MX  10 gw.solo.com." in zones["solo.com"].text
    assert '@  IN TXT "v=spf1 ip4:10.8.0.1 -all"' in zones["solo.com"].text


def test_spf_refuses_everyone_without_outbound_ims(tmp_path: Path) -> None:
    spec = SOLO.format(ims="ims: {transfer_mode: inbound_only}")
    zones = by_origin(render_zones(load_text(tmp_path, spec), {}, TODAY))
    assert '@  IN TXT "v=spf1 -all"' in zones["solo.com"].text
    assert "@  IN MX  10 gw.solo.com." in zones["solo.com"].text


def test_soa_and_ns_from_the_spec(contoso: dict[str, ZoneFile], tmp_path: Path) -> None:
    soa = parse(contoso["contoso.com"], tmp_path).get_soa()
    assert str(soa.mname) == "ns1.contoso.com."
    # RFC 1035 §8: the dot inside the local part is escaped.
    assert str(soa.rname) == "john\\.doe.contoso.com."
    assert (soa.refresh, soa.retry, soa.expire, soa.minimum) == (7200, 600, 1209600, 300)
    assert rdata_texts(contoso["contoso.com"], tmp_path, "contoso.com.", "NS") == [
        "ns.example.net.",
        "ns1.contoso.com.",
    ]
    net = parse(contoso["contoso.net"], tmp_path).get_soa()
    assert str(net.rname) == "hostmaster.contoso.net."


def test_address_records_go_to_the_zone_holding_the_server(
    contoso: dict[str, ZoneFile], tmp_path: Path
) -> None:
    com = parse(contoso["contoso.com"], tmp_path)
    owners = sorted(str(name) for name, _ in com.iterate_rdatasets("A"))
    assert owners == [
        "mx1.contoso.com.",
        "mx2.contoso.com.",
        "ns1.contoso.com.",
        "out.contoso.com.",
        "www.contoso.com.",
    ]
    assert rdata_texts(contoso["contoso.net"], tmp_path, "bare.contoso.net.", "A") == ["10.9.0.100"]


def test_extra_record_keeps_its_ttl(contoso: dict[str, ZoneFile], tmp_path: Path) -> None:
    www = parse(contoso["contoso.com"], tmp_path).find_rdataset("www.contoso.com.", "A")
    assert www.ttl == 300
    net = parse(contoso["contoso.net"], tmp_path).find_rdataset("contoso.net.", "MX")
    assert net.ttl == 600


def test_reverse_zones_per_24_in_numeric_order(contoso: dict[str, ZoneFile]) -> None:
    text = contoso["0.9.10.in-addr.arpa"].text
    owners = [line.split()[0] for line in text.splitlines() if " PTR " in line]
    assert owners == ["25", "26", "53", "100"]
    assert "7 IN PTR out.contoso.com." in contoso["1.9.10.in-addr.arpa"].text


def test_no_zones_without_dns_entries(tmp_path: Path) -> None:
    spec = CONTOSO.split("dns:\n", maxsplit=1)[0]
    assert render_zones(load_text(tmp_path, spec), {}, TODAY) == []


# --- records no name server would load ----------------------------------------------------------


def with_records(records: str) -> str:
    return CONTOSO.replace(
        "      - {name: www, type: A, value: 10.9.0.80, ttl: 300}\n",
        "      - {name: www, type: A, value: 10.9.0.80, ttl: 300}\n"
        + textwrap.indent(records, "      "),
    )


def test_cname_beside_other_data_is_refused(tmp_path: Path) -> None:
    spec = with_records("- {name: mx1, type: CNAME, value: www}\n")
    with pytest.raises(ZoneError, match=r"CNAME 'mx1' has other data: A"):
        render_zones(load_text(tmp_path, spec), {}, TODAY)


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("{name: '@', type: MX, value: 40 nowhere}", "MX '@' points at 'nowhere.contoso.com.'"),
        ("{name: sub, type: NS, value: ns.sub}", "NS 'sub' points at 'ns.sub.contoso.com.'"),
        (
            "{name: _sip._tcp, type: SRV, value: 0 5 5060 sip}",
            "SRV '_sip._tcp' points at 'sip.contoso.com.'",
        ),
    ],
)
def test_target_without_address_is_refused(tmp_path: Path, record: str, problem: str) -> None:
    spec = with_records(f"- {record}\n")
    with pytest.raises(ZoneError, match=re.escape(f"{problem}, which has no A or AAAA")):
        render_zones(load_text(tmp_path, spec), {}, TODAY)


def test_srv_target_root_means_no_service(tmp_path: Path) -> None:
    spec = with_records("- {name: _sip._tcp, type: SRV, value: 0 0 0 .}\n")
    zones = by_origin(render_zones(load_text(tmp_path, spec), {}, TODAY))
    assert re.search(r"^_sip\._tcp +IN SRV 0 0 0 \.$", zones["contoso.com"].text, re.MULTILINE)


def test_second_spf_record_is_refused(tmp_path: Path) -> None:
    spec = with_records("- {name: '@', type: TXT, value: '\"v=spf1 a -all\"'}\n")
    with pytest.raises(ZoneError, match="SPF is derived"):
        render_zones(load_text(tmp_path, spec), {}, TODAY)
