"""Routing per recipient, as an Exchange MTA does it (the seed's step 2).

GAL lookup across every proxy type, case-insensitively: this server -> the store; another
server of the organization -> transfer to its MTA. Not in the GAL: an owned SMTP domain means
no such recipient (a non-delivery report); anything else goes by the GWART as compiled for this
host (best fit, least cost, scope applied; equal routes spread by message id) to the gateway
server's MTA, which hands it to its IMS. No route: a non-delivery report.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mailwright.runtime.contract import HostConfig, Recipient, read_gal, read_gwart
from mailwright.runtime.routing import AddressType, Route, select


class Disposition(enum.Enum):
    LOCAL = "local"  # into this server's store
    TRANSFER = "transfer"  # to another server of the organization (home server or gateway)
    GATEWAY = "gateway"  # this server is the gateway: hand it to the local IMS
    NDR = "ndr"  # undeliverable


@dataclass(frozen=True)
class Decision:
    disposition: Disposition
    server: str = ""  # the next server, or this one
    alias: str = ""  # the local mailbox, for LOCAL
    status: str = ""  # RFC 3463 status code, for NDR
    reason: str = ""


class Router:
    """A host's routing over its organization's shared artifacts: the GAL and the GWART."""

    def __init__(self, host: HostConfig, gal: Iterable[Recipient], gwart: Iterable[Route]) -> None:
        server = host.server
        self.server = server.name
        self.site = server.site
        self.location = server.location
        self.domains = {d.casefold() for d in host.domains}
        # Every server holds the whole GWART, as in Exchange; the scope of a route (its site
        # or location) decides whether this server may use it.
        self.routes = tuple(r for r in gwart if r.visible_from(self.site, self.location))
        recipients = tuple(gal)
        self.recipients = dict(_index(recipients))
        # alias, and every previous alias, -> (alias, home server): whose mail a store folder
        # holds, and where it belongs (Move Mailbox).
        self.owners = {
            name.casefold(): (row.alias, row.home_server)
            for row in recipients
            for name in (row.alias, *row.previous_aliases)
        }

    @classmethod
    def load(cls, host: HostConfig, organization: Path) -> Router:
        """From the organization's compiled folder (gal.json, gwart.json)."""
        return cls(
            host, read_gal(organization / "gal.json"), read_gwart(organization / "gwart.json")
        )

    def owner(self, alias: str) -> tuple[str, str] | None:
        """(alias, home server) of the mailbox that is or was called `alias`."""
        return self.owners.get(alias.casefold())

    def route(self, kind: str, address: str, message_id: str = "") -> Decision:
        try:
            address_type = AddressType(kind.upper())
        except ValueError:
            return Decision(Disposition.NDR, status="5.1.3", reason=f"unknown address type {kind}")
        found = self.recipients.get((address_type, address.casefold()))
        if found is not None:
            alias, home = found
            if home == self.server:
                return Decision(
                    Disposition.LOCAL, home, alias, reason=f"GAL: {alias} on this server"
                )
            return Decision(Disposition.TRANSFER, home, alias, reason=f"GAL: {alias} on {home}")
        if (
            address_type is AddressType.SMTP
            and address.rpartition("@")[2].casefold() in self.domains
        ):
            return Decision(
                Disposition.NDR, status="5.1.1", reason=f"recipient not found: {address}"
            )
        chosen = select(
            self.routes, address_type, address, self.site, self.location, message_id=message_id
        ).chosen
        if chosen is None or chosen.local:
            return Decision(Disposition.NDR, status="5.4.4", reason=f"no route to {kind}:{address}")
        if chosen.gateway == self.server:
            return Decision(Disposition.GATEWAY, self.server, reason=f"GWART: {_row(chosen)} here")
        return Decision(Disposition.TRANSFER, chosen.gateway, reason=f"GWART: {_row(chosen)}")


def _row(route: Route) -> str:
    return (
        f"{route.type.value}:{route.address_space or '(any)'} via {route.gateway} cost {route.cost}"
    )


def _index(
    recipients: Iterable[Recipient],
) -> Iterable[tuple[tuple[AddressType, str], tuple[str, str]]]:
    for row in recipients:
        home = (row.alias, row.home_server)
        for kind, address in row.primary.items():
            yield (AddressType(kind), address.casefold()), home
        for text in row.secondary:
            kind, _, address = text.partition(":")
            yield (AddressType(kind.upper()), address.casefold()), home
