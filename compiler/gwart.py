"""The Gateway Address Routing Table of an organization: its rows and their text form.

Rows: one per (address type, address space, connector/gateway server, cost, scope); the
organization's own domains and site addresses are local routes. Selection follows Exchange's
rules and lives in `mailwright.runtime.routing`, which the runtime's MTA uses as well.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mailwright.runtime.routing import (
    AddressType,
    Candidate,
    Fit,
    FitKind,
    Route,
    Scope,
    Selection,
    fit,
    format_x400,
    select,
)
from mailwright.schema import LoadedSpec
from mailwright.schema.models import ImsConnector, Role, TransferMode
from mailwright.schema.recipients import site_msmail, site_x400

__all__ = ["Candidate", "Fit", "FitKind", "Gwart", "Route", "Selection", "build_gwart", "fit"]


@dataclass(frozen=True)
class Gwart:
    organization: str
    routes: tuple[Route, ...]

    def visible_from(self, site: str, location: str) -> Gwart:
        return Gwart(
            self.organization, tuple(r for r in self.routes if r.visible_from(site, location))
        )

    def select(
        self, kind: AddressType, address: str, site: str, location: str, *, message_id: str = ""
    ) -> Selection:
        return select(self.routes, kind, address, site, location, message_id=message_id)

    def as_json(self) -> dict[str, Any]:
        return {"organization": self.organization, "routes": [r.as_json() for r in self.routes]}

    def as_text(self) -> str:
        header = ("TYPE", "ADDRESS SPACE", "GATEWAY", "COST", "SCOPE", "SITE", "LOCATION")
        rows = [
            (
                r.type.value,
                r.address_space or "(any)",
                r.gateway or "(local)",
                str(r.cost),
                r.scope.value,
                r.site or "-",
                r.location or "-",
            )
            for r in self.routes
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]
        ]
        return f"# GWART of organization {self.organization}\n" + "\n".join(lines) + "\n"


def build_gwart(loaded: LoadedSpec) -> Gwart:
    return Gwart(loaded.name, tuple(sorted({*_local_routes(loaded), *_connector_routes(loaded)})))


def _local_routes(loaded: LoadedSpec) -> Iterable[Route]:
    organization = loaded.spec.organization
    for domain in organization.domains:
        yield Route(AddressType.SMTP, domain, "", "", "", 1, Scope.ORGANIZATION, local=True)
    for site in loaded.spec.sites:
        x400 = format_x400(site_x400(site, organization))
        msmail = site_msmail(site, organization)
        yield Route(AddressType.X400, x400, "", site.name, "", 1, Scope.ORGANIZATION, local=True)
        yield Route(AddressType.MS, msmail, "", site.name, "", 1, Scope.ORGANIZATION, local=True)


def _connector_routes(loaded: LoadedSpec) -> Iterable[Route]:
    for site in loaded.spec.sites:
        for server in site.servers:
            if Role.IMS not in server.roles:
                continue
            ims = server.ims or ImsConnector()
            if ims.transfer_mode not in (
                TransferMode.INBOUND_AND_OUTBOUND,
                TransferMode.OUTBOUND_ONLY,
            ):
                continue
            for space in ims.address_spaces:
                yield Route(
                    space.type,
                    space.pattern or "",
                    server.name,
                    site.name,
                    server.location or "",
                    space.cost,
                    space.scope,
                )
