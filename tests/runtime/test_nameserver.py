"""The DNS server answers for the compiled zones; `dig` checks it against the zone files."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from mailwright.compiler.build import compile_specs
from mailwright.runtime.nameserver import Authority, NameServer, load_zones
from mailwright.schema import load_specs
from tests.helpers import SEED_SPECS


@pytest.fixture(scope="module")
def zone_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("build")
    specs = load_specs(SEED_SPECS)
    compile_specs(specs, out)
    return sorted(out.glob("*/zones/*.zone"))


@pytest.fixture(scope="module")
def port(zone_files: list[Path]) -> Iterator[int]:
    loop = asyncio.new_event_loop()
    server = NameServer(Authority(load_zones(zone_files)))
    _, bound = loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield bound
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def dig(require_tool: object, port: int, *args: str) -> str:
    assert callable(require_tool)
    done = subprocess.run(
        [require_tool("dig"), "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout


def test_every_record_of_every_zone_is_answered_as_in_the_file(
    require_tool: object, port: int, zone_files: list[Path]
) -> None:
    for path in zone_files:
        zone = dns.zone.from_file(str(path), path.name.removesuffix(".zone"), relativize=False)
        for name, node in zone.nodes.items():
            for rdataset in node.rdatasets:
                kind = dns.rdatatype.to_text(rdataset.rdtype)
                answer = dig(require_tool, port, "+short", "+norecurse", kind, name.to_text())
                expected = sorted(r.to_text() for r in rdataset)
                assert sorted(answer.split("\n")[:-1]) == expected, (name, kind)


def test_the_seed_mx_over_udp_and_tcp(require_tool: object, port: int) -> None:
    assert dig(require_tool, port, "+short", "MX", "minasi.com") == "10 arlington.minasi.com.\n"
    assert (
        dig(require_tool, port, "+short", "+tcp", "MX", "minasi.com")
        == "10 arlington.minasi.com.\n"
    )
    full = dig(require_tool, port, "MX", "minasi.com")
    assert "flags: qr aa" in full
    assert "arlington.minasi.com.\t3600\tIN\tA\t10.2.0.10" in full  # additional section


def test_nxdomain_nodata_refused(require_tool: object, port: int) -> None:
    missing = dig(require_tool, port, "A", "nobody.dcnw.com")
    assert "status: NXDOMAIN" in missing and "SOA" in missing
    nodata = dig(require_tool, port, "AAAA", "athena.dcnw.com")
    assert "status: NOERROR" in nodata and "ANSWER: 0" in nodata and "SOA" in nodata
    assert "status: REFUSED" in dig(require_tool, port, "A", "example.org")
    assert "Transfer failed" in dig(require_tool, port, "AXFR", "dcnw.com")


def test_cname_is_chased_inside_the_zone(require_tool: object, port: int) -> None:
    assert dig(require_tool, port, "+short", "A", "www.dcnw.com") == "athena.dcnw.com.\n10.1.0.10\n"


def test_reverse_zone(require_tool: object, port: int) -> None:
    assert dig(require_tool, port, "+short", "-x", "10.1.0.20") == "hermes.dcnw.com.\n"
