"""Deploy targets: where the hosts of an applied state run, as octoDNS has providers.

`apply` hands a Target the runtime actions of its plan (runtime/contract.py RuntimeAction) and
the folder of the newly applied artifacts, and waits until every host runs the new serial. The
local target (`local.py`) is a supervisor process on this machine with every host on a
loopback address.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from mailwright.runtime.contract import RuntimeAction

Progress = Callable[[int, int], None]  # (hosts answering, hosts in all)


class LaunchError(Exception):
    """The runtime did not come up as applied; the message names the hosts and why."""


class Target(Protocol):
    def launch(
        self,
        artifacts: Path,
        serial: int,
        actions: Sequence[RuntimeAction],
        progress: Progress | None = None,
    ) -> None:
        """Hand over the actions of applying `serial`, then wait until every host runs it
        (LaunchError if they do not)."""

    def ensure_running(self, serial: int, progress: Progress | None = None) -> None:
        """The hosts of `serial` running (after a crash or `down`), as applied."""

    def wait_until_moved(
        self, stores: Sequence[tuple[str, str]], progress: Progress | None = None
    ) -> list[str]:
        """Until the old homes (server, alias) of moved mailboxes are empty; those left."""

    def status(self) -> dict[str, Any]:
        """What runs: {"pid", "serial", "hosts": {"ORG/server": {...}}}."""

    def down(self) -> bool:
        """Stop every host; False if nothing ran."""
