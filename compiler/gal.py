"""The Global Address List: every recipient of an organization and all its addresses."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from mailwright.compiler.inheritance import effective_pop3, server_pop3
from mailwright.runtime import contract
from mailwright.runtime.routing import AddressType
from mailwright.schema import LoadedSpec
from mailwright.schema.addressing import ProxyAddress
from mailwright.schema.models import Mailbox, Pop3Settings

RECIPIENT_INDENT = "    "


@dataclass(slots=True)
class GalEntry:
    row: contract.Recipient  # as gal.json and the host configs carry it (the host contract)
    proxies: tuple[ProxyAddress, ...]
    mailbox: Mailbox
    # The row as JSON data, made once: gal.json and host configs both carry it.
    record: dict[str, Any] = field(repr=False)

    def primary(self, kind: AddressType) -> str:
        return next(p.address for p in self.proxies if p.primary and p.type is kind)


# Plain str keys for orjson, looked up rather than read through the enum's `value` property.
_TYPE_NAMES = {t: t.value for t in AddressType}


def _row(
    mailbox: Mailbox,
    proxies: tuple[ProxyAddress, ...],
    home: tuple[str, str],
    pop3: contract.Pop3Settings,
) -> contract.Recipient:
    """Primaries by type, secondaries as `type:address`."""
    return contract.Recipient(
        mailbox.alias,
        mailbox.display,
        *home,
        {_TYPE_NAMES[kind]: a for kind, a, primary in proxies if primary},
        tuple(str(p) for p in proxies if not p.primary),
        pop3,
        mailbox.size_limit,
        # The plan pairs them with the aliases that left the GAL (a rename), and the store
        # host renames their folders.
        mailbox.previous_aliases,
    )


@dataclass(frozen=True)
class Gal:
    organization: str
    entries: tuple[GalEntry, ...]

    @functools.cached_property
    def _index(self) -> dict[tuple[AddressType, str], GalEntry]:
        return {p.key: e for e in self.entries for p in e.proxies}

    def lookup(self, kind: AddressType, address: str) -> GalEntry | None:
        """Proxy addresses compare case-insensitively, across every type."""
        return self._index.get((kind, address.casefold()))

    def __iter__(self) -> Iterator[GalEntry]:
        return iter(self.entries)

    def as_text(self) -> str:
        """gal.json: JSON with one recipient a line, so that a line-based diff (git's, and the
        plan's) shows exactly the recipients that changed, and a 100,000-recipient GAL is half
        the size of an indented one."""
        head = orjson.dumps(self.organization).decode()
        body = ",\n".join(RECIPIENT_INDENT + recipient_line(e.record) for e in self.entries)
        recipients = f"[\n{body}\n  ]" if body else "[]"
        return f'{{\n  "organization": {head},\n  "recipients": {recipients}\n}}\n'

    def homed_on(self) -> dict[str, list[GalEntry]]:
        """Entries grouped by home server."""
        groups: dict[str, list[GalEntry]] = {}
        for entry in self.entries:
            groups.setdefault(entry.row.home_server, []).append(entry)
        return groups


def recipient_line(record: dict[str, Any]) -> str:
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()


def pop3_row(settings: Pop3Settings) -> contract.Pop3Settings:
    """The spec's POP3 settings as the host contract carries them."""
    return contract.Pop3Settings.from_json(settings.model_dump(mode="json"))


def build_gal(loaded: LoadedSpec) -> Gal:
    # Per home server, once: its site, and the POP3 settings its mailboxes inherit.
    homes = {}
    for site in loaded.spec.sites:
        for server in site.servers:
            homes[server.name.casefold()] = (site, server, pop3_row(server_pop3(site, server)))
    entries = []
    for mailbox, proxies in zip(loaded.mailboxes, loaded.proxies, strict=True):
        site, server, pop3 = homes[mailbox.home_server.casefold()]
        if (overrides := mailbox.protocols.pop3).model_fields_set:
            pop3 = pop3_row(effective_pop3(site, server, overrides))
        row = _row(mailbox, proxies, (site.name, server.name), pop3)
        entries.append(GalEntry(row, proxies, mailbox, row.as_json()))
    entries.sort(key=lambda e: e.row.alias.casefold())
    return Gal(loaded.name, tuple(entries))
