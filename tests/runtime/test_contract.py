"""The host contract: what the compiler writes for the seed organizations is what a host
reads, field for field; a file of another format or with a field missing is refused in one
line; and a host process loads neither pydantic nor the spec."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mailwright.compiler.build import to_json
from mailwright.runtime.contract import (
    FORMAT_VERSION,
    ContractError,
    read_gal,
    read_gwart,
    read_host_config,
    read_servers,
)

ORGANIZATIONS = ("DCNW", "Minasi")


def _host_configs(seed_artifacts: Path) -> list[Path]:
    return sorted(seed_artifacts.glob("*/hosts/*.json"))


def test_every_seed_host_config_reads_back_as_written(seed_artifacts: Path) -> None:
    """Parsed and written again, each config is the compiler's text byte for byte: the contract
    reads every field the compiler writes, and the compiler writes every field it reads."""
    configs = _host_configs(seed_artifacts)
    assert len(configs) == 4
    for path in configs:
        config = read_host_config(path)
        assert to_json(config.as_json()) == path.read_text(encoding="utf-8"), path.name
        assert config.server.name == path.stem


def test_the_shared_artifacts_read_back_as_written(seed_artifacts: Path) -> None:
    for organization in ORGANIZATIONS:
        folder = seed_artifacts / organization
        servers = read_servers(folder / "servers.json")
        written = {name: peer.as_json() for name, peer in servers.items()}
        assert to_json(written) == (folder / "servers.json").read_text(encoding="utf-8")
        gal: dict[str, Any] = json.loads((folder / "gal.json").read_text(encoding="utf-8"))
        rows = read_gal(folder / "gal.json")
        assert to_json([r.as_json() for r in rows]) == to_json(gal["recipients"])
        gwart: dict[str, Any] = json.loads((folder / "gwart.json").read_text(encoding="utf-8"))
        assert [r.as_json() for r in read_gwart(folder / "gwart.json")] == gwart["routes"]


def test_the_seed_hosts_serve_what_their_roles_say(seed_artifacts: Path) -> None:
    hermes = read_host_config(seed_artifacts / "DCNW/hosts/hermes.json")
    assert hermes.server.serves("smtp") and not hermes.server.serves("pop3")
    assert hermes.connector.outbound and hermes.postmaster == "postmaster@dcnw.com"
    athena = read_host_config(seed_artifacts / "DCNW/hosts/athena.json")
    assert athena.ims is None and [m.recipient.alias for m in athena.mailboxes] == ["jane", "pat"]


def _altered(source: Path, target: Path, change: dict[str, Any]) -> Path:
    config: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    config.update(change)
    target.write_text(json.dumps(config), encoding="utf-8")
    return target


def test_a_config_of_another_format_is_refused_in_one_line(
    seed_artifacts: Path, tmp_path: Path
) -> None:
    path = _altered(
        seed_artifacts / "DCNW/hosts/athena.json", tmp_path / "athena.json", {"format_version": 2}
    )
    with pytest.raises(ContractError) as refused:
        read_host_config(path)
    assert str(refused.value) == (
        f"{path} has host config format 2; this mailwright reads format {FORMAT_VERSION}"
    )


def test_a_config_without_a_field_is_refused_in_one_line(
    seed_artifacts: Path, tmp_path: Path
) -> None:
    source = seed_artifacts / "DCNW/hosts/hermes.json"
    config: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    del config["ims"]["retry"]
    path = tmp_path / "hermes.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(
        ContractError, match=r"hermes.json is not a host config: it has no field 'retry'$"
    ):
        read_host_config(path)


def test_a_host_refuses_a_config_of_another_format(seed_artifacts: Path, tmp_path: Path) -> None:
    """A real host process: one line on stderr, exit status 1, nothing served."""
    path = _altered(
        seed_artifacts / "DCNW/hosts/athena.json", tmp_path / "athena.json", {"format_version": 2}
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mailwright.runtime.host",
            str(path),
            "--state",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"error: {path} has host config format 2; this mailwright reads format {FORMAT_VERSION}\n"
    )


def test_a_host_process_loads_neither_pydantic_nor_the_spec() -> None:
    """The host, its IMS workers and the supervisor import the contract, not the spec loader."""
    probe = (
        "import sys, mailwright.runtime.host.process, mailwright.runtime.ims.workers, "
        "mailwright.runtime.supervisor.daemon\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'pydantic_core', 'ruamel', 'yaml', 'typer') "
        "or m.startswith(('mailwright.schema', 'mailwright.compiler'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "[]\n"
