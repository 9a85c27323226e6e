"""Renderers for a route explanation: text for people, JSON for scripts."""

from __future__ import annotations

import json
from typing import Any

from mailwright.compiler.route import RouteExplanation


def render_route(result: RouteExplanation) -> list[str]:
    lines = [
        f"address:   {result.type.value}:{result.address} ({result.type.value} address)",
        f"from:      {result.from_server} (organization {result.organization})",
    ]
    if result.recipient is not None:
        entry = result.recipient.row
        lines += [
            f"GAL:       {entry.display_name} <{entry.alias}>, home server {entry.home_server} "
            f"(site {entry.site})",
        ]
    else:
        lines.append("GAL:       no recipient has this address")
    if result.selection is not None:
        lines.append("GWART candidates (best first):")
        for candidate in result.selection.candidates:
            route = candidate.route
            mark = "*" if route == result.selection.chosen else " "
            lines.append(
                f"  {mark} {route.type.value}:{route.address_space or '(any)'} via "
                f"{route.gateway or '(local)'}: {candidate.why()}"
            )
        if result.selection.tied:
            lines.append(f"  equal routes spread by message id among {len(result.selection.tied)}")
    if result.mx:
        kind = "implicit MX (A record)" if result.mx_implicit else "MX"
        for host in result.mx:
            lines.append(
                f"{kind}: {host.preference} {host.host} -> {', '.join(host.addresses) or '?'}"
            )
    if result.path:
        lines.append(f"path:      {' -> '.join(result.path)}")
    lines.append(
        f"verdict:   {'routable' if result.routable else 'not routable: ' + result.reason}"
    )
    return lines


def route_json(result: RouteExplanation) -> dict[str, Any]:
    selection = result.selection
    return {
        "address": result.address,
        "type": result.type.value,
        "organization": result.organization,
        "from": result.from_server,
        "recipient": result.recipient.record if result.recipient else None,
        "candidates": [
            {
                **c.route.as_json(),
                "fit": str(c.fit) if c.fit else None,
                "eligible": c.eligible,
                "why": c.why(),
            }
            for c in (selection.candidates if selection else ())
        ],
        "chosen": selection.chosen.as_json() if selection and selection.chosen else None,
        "mx": [
            {"preference": h.preference, "host": h.host, "addresses": list(h.addresses)}
            for h in result.mx
        ],
        "path": result.path,
        "routable": result.routable,
        "reason": result.reason,
    }


def render_route_json(result: RouteExplanation) -> str:
    return json.dumps(route_json(result), indent=2, ensure_ascii=False)
