"""Where the running hosts are."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mailwright.runtime.contract import read_servers


def smtp_endpoints(state: Path) -> Callable[[str], tuple[str, int] | None]:
    """Which running host has a spec address: its servers.json entry and its endpoints.json."""

    def lookup(address: str) -> tuple[str, int] | None:
        for servers_file in sorted(state.glob("artifacts/*/*/servers.json")):
            for name, server in read_servers(servers_file).items():
                if server.ipv4 == address:
                    try:
                        endpoints = json.loads(
                            (state / "hosts" / name / "endpoints.json").read_text()
                        )
                        host, _, port = endpoints["smtp"].rpartition(":")
                        return host, int(port)
                    except (OSError, ValueError, KeyError):
                        return None
        return None

    return lookup


def resolver_endpoint(state: Path) -> Callable[[], tuple[str, int] | None]:
    """The local runtime's resolver: any running host with the dns role."""

    def lookup() -> tuple[str, int] | None:
        for endpoints_file in sorted(state.glob("hosts/*/endpoints.json")):
            try:
                host, _, port = json.loads(endpoints_file.read_text())["dns"].rpartition(":")
                return host, int(port)
            except (OSError, ValueError, KeyError):
                continue
        return None

    return lookup
