"""The lab's pure parts: names, the world's addresses, the root zone; no root needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailwright.runtime.lab import (
    Lab,
    LabHost,
    LabUnavailableError,
    WorldAddresses,
    check_available,
    lab_prefix,
)
from mailwright.runtime.lab.netns import MAX_INTERFACE_NAME
from mailwright.runtime.lab.world import choose_world, root_zone
from tests.lab.conftest import DELEGATIONS


def test_prefixes_differ_per_directory_and_fit_interface_names(tmp_path: Path) -> None:
    one, two = lab_prefix(tmp_path / "a"), lab_prefix(tmp_path / "b")
    assert one != two and one.startswith("mw") and len(one) == 8
    assert len(f"{one}v999") <= MAX_INTERFACE_NAME


def test_the_world_avoids_a_test_net_the_machine_uses() -> None:
    # RFC 5737 §3: three documentation networks; some sandboxes sit on the first one.
    assert choose_world(["10.0.0.0/8"]).root_server == "192.0.2.1"
    world = choose_world(["192.0.2.2/24", "127.0.0.1/8"])
    assert world.all == ["198.51.100.1", "198.51.100.2", "198.51.100.25"]
    with pytest.raises(LabUnavailableError, match="all three RFC 5737 TEST-NETs"):
        choose_world(["192.0.0.0/2"])


def test_the_root_zone_delegates_with_glue_and_answers_for_example_net() -> None:
    zone = root_zone(DELEGATIONS, WorldAddresses())
    lines = set(zone.splitlines())
    assert "dcnw.example. IN NS ns1.dcnw.example." in lines
    assert "ns1.dcnw.example. IN A 10.1.0.10" in lines
    assert "minasi.example. IN NS ns.minasi.example." in lines
    assert "example.net. IN MX 10 mx.example.net." in lines
    assert "mx.example.net. IN A 192.0.2.25" in lines


def test_without_root_the_lab_refuses_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(LabUnavailableError) as caught:
        check_available()
    assert (
        str(caught.value) == "the network lab is unavailable: it needs root (running as uid 1000)"
    )
    with pytest.raises(LabUnavailableError):
        Lab(tmp_path).up([LabHost("athena", "10.1.0.10")], {})
