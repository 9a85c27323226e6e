"""What one host reads of an applied serial: its config (`hosts/<server>.json`), the router over
its organization's GAL and GWART, its per-mailbox tables, and, for a DNS host, every zone of the
local runtime.

A host reads a snapshot at start and again on each reload, off the event loop (at 100,000
mailboxes indexing the GAL takes seconds), and its running parts then take it in at once.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path

from mailwright.runtime.contract import HostConfig, read_host_config
from mailwright.runtime.mta.agent import MailboxTables
from mailwright.runtime.mta.router import Router
from mailwright.runtime.nameserver import Authority, load_zones


class SnapshotError(Exception):
    """A serial a host could not read; the host keeps running the one it has."""

    def __init__(self, serial: int | None, why: str) -> None:
        super().__init__(f"cannot read serial {serial}: {why}")
        self.serial = serial
        self.why = why


@dataclass(frozen=True)
class Snapshot:
    serial: int | None  # None: a config a host was started on by hand, outside any serial
    config_path: Path
    config: HostConfig
    router: Router
    tables: MailboxTables
    authority: Authority | None  # for a host with the dns role

    @classmethod
    def read(cls, config_path: Path, serial: int | None) -> Snapshot:
        config = read_host_config(config_path)
        organization = config_path.parent.parent
        authority = None
        if config.server.serves("dns"):
            # The local runtime's one resolver answers for every organization applied together.
            zones = sorted(organization.parent.glob("*/zones/*.zone"))
            authority = Authority(load_zones(zones))
        router = Router.load(config, organization)
        return cls(serial, config_path, config, router, MailboxTables.of(config), authority)

    @classmethod
    def current(cls, state: Path, config_path: Path) -> Snapshot:
        """The state's current serial of the host whose config was `config_path` (apply writes
        each serial into a folder of its own, and removes the one before); SnapshotError if
        it cannot be read, whatever is wrong with it."""
        serial = None
        try:
            serial = int(json.loads((state / "state.json").read_text(encoding="utf-8"))["serial"])
            organization = config_path.parent.parent.name
            hosts = state / "artifacts" / str(serial) / organization / "hosts"
            return cls.read(hosts / config_path.name, serial)
        except Exception as exc:  # a broken serial may raise anything its readers raise
            raise SnapshotError(serial, f"{type(exc).__name__}: {exc}") from exc


def steady_heap() -> None:
    """What a process loaded to serve (its config, the GAL, the GWART) stays until it exits
    or reloads: out of the cyclic collector's sight (gc.freeze), which need not walk it again
    and again; and the young generation collected every 20,000 allocations instead of 700, as
    a message makes thousands (measured with the seed's organization: 1 to 3% less CPU a
    message). The few cycles an SMTP session leaves (aiosmtpd's tables of bound methods) are
    still collected. Called again after a reload (the heap frozen before): what is garbage goes
    first, then the new tables are frozen too. The old ones, without cycles, were freed as
    their last reference went; the cycles of sessions open at that moment stay, a few
    kilobytes a reload."""
    if gc.get_freeze_count():
        gc.collect()
    gc.freeze()
    gc.set_threshold(20_000)
