"""`graph`: organizations as a Graphviz DOT picture.

Each organization is a cluster, each site a cluster inside it, each server a node (shape by its
busiest role). Every organization's IMS connectors meet at one shared "Internet" node: outbound
address spaces as edges to it, inbound (MX) domains as edges from it, so two organizations
drawn together show the seed story's path Athena -> Hermes -> Internet -> Arlington.

The text is a pure function of the specs: everything sorted, every identifier quoted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mailwright.runtime.routing import Scope
from mailwright.schema import LoadedSpec, Server, Site
from mailwright.schema.models import AddressSpace, ImsConnector, Role

INTERNET = "internet"
INDENT = "  "


@dataclass(frozen=True)
class _Look:
    shape: str
    fill: str


# The IMS is the organization's door to the outside, so it wins the shape of a mixed server.
_LOOKS = {
    Role.IMS: _Look("hexagon", "#fff2cc"),
    Role.STORE: _Look("box", "#dae8fc"),
    Role.DNS: _Look("ellipse", "#e1d5e7"),
}
_MTA_ONLY = _Look("ellipse", "#f5f5f5")


def quote(text: str) -> str:
    """A DOT double-quoted ID: backslashes and quotes escaped, newlines as DOT's `\\n`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return f'"{escaped}"'


def _attrs(**attrs: str | int) -> str:
    """`[a="x", b="2"]`, keys in the order given (always the same order, so stable output)."""
    return "[" + ", ".join(f"{k}={quote(str(v))}" for k, v in attrs.items()) + "]"


def server_id(organization: str, server: str) -> str:
    # "/" cannot occur in a name, so no server id equals another or INTERNET.
    return f"{organization}/{server}"


def space_label(space: AddressSpace, site: Site, server: Server) -> str:
    """`SMTP:* cost 1` and the scope on a second line (with the site or location it means)."""
    scope = space.scope.value
    if space.scope is Scope.SITE:
        scope += f" ({site.name})"
    elif space.scope is Scope.LOCATION:
        scope += f" ({server.location or '-'})"
    return f"{space.type.value}:{space.pattern or '(any)'} cost {space.cost}\nscope {scope}"


def _ims(server: Server) -> ImsConnector | None:
    """The `ims` role without settings means the default connector."""
    if Role.IMS not in server.roles:
        return None
    return server.ims or ImsConnector()


def _look(server: Server) -> _Look:
    return next(
        (_LOOKS[r] for r in (Role.IMS, Role.STORE, Role.DNS) if r in server.roles), _MTA_ONLY
    )


def _nameserver_of(loaded: LoadedSpec) -> dict[str, list[str]]:
    """Name server (case-folded server name, or external host) -> the zones it serves."""
    zones: dict[str, list[str]] = {}
    for zone in loaded.spec.dns:
        for ns in zone.nameservers:
            key = ns if ns.endswith(".") else ns.casefold()
            zones.setdefault(key, []).append(zone.domain)
    return {k: sorted(set(v)) for k, v in zones.items()}


def _server_node(
    loaded: LoadedSpec, server: Server, mailboxes: Counter[str], zones: dict[str, list[str]]
) -> str:
    roles = ", ".join(r.value for r in Role if r in server.roles) or "mta only"
    lines = [server.name, server.fqdn, str(server.ipv4), roles]
    if server.location:
        lines.append(f"location {server.location}")
    if Role.STORE in server.roles:
        count = mailboxes[server.name.casefold()]
        lines.append(f"{count} mailbox{'es' if count != 1 else ''}")
    served = zones.get(server.name.casefold(), [])
    if served:
        lines.append("DNS for " + ", ".join(served))
    look = _look(server)
    dns = Role.DNS in server.roles
    attrs = _attrs(
        label="\n".join(lines),
        shape=look.shape,
        style="filled,bold" if dns else "filled",
        fillcolor=look.fill,
        # The DNS hosts are marked with a double outline whatever their shape.
        peripheries=2 if dns else 1,
    )
    return f"{quote(server_id(loaded.name, server.name))} {attrs};"


def _organization(loaded: LoadedSpec, depth: int) -> Iterator[str]:
    pad, inner = INDENT * depth, INDENT * (depth + 1)
    organization = loaded.spec.organization
    title = organization.name
    if organization.display_name:
        title += f" ({organization.display_name})"
    mailboxes = Counter(m.home_server.casefold() for m in loaded.mailboxes)
    zones = _nameserver_of(loaded)
    yield f"{pad}subgraph {quote('cluster_org/' + loaded.name)} {{"
    yield f"{inner}label={quote(title + chr(10) + ', '.join(organization.domains))};"
    yield f'{inner}style="rounded"; color="#444444";'
    for site in sorted(loaded.spec.sites, key=lambda s: s.name.casefold()):
        yield f"{inner}subgraph {quote(f'cluster_site/{loaded.name}/{site.name}')} {{"
        yield f"{inner}{INDENT}label={quote(site.name)};"
        yield f'{inner}{INDENT}style="dashed"; color="#888888";'
        for server in sorted(site.servers, key=lambda s: s.name.casefold()):
            yield f"{inner}{INDENT}{_server_node(loaded, server, mailboxes, zones)}"
        yield f"{inner}}}"
    for host in sorted(h for h in zones if h.endswith(".")):
        attrs = _attrs(
            label=f"{host}\nexternal DNS\nDNS for {', '.join(zones[host])}",
            shape="ellipse",
            style="dashed,bold",
            peripheries=2,
        )
        yield f"{inner}{quote(server_id(loaded.name, host))} {attrs};"
    yield f"{pad}}}"


def _edge(server: str, *, outbound: bool, right: bool, **attrs: str) -> str:
    """One edge between a server and the Internet, written in the layout's direction.

    dot ranks an edge's tail before its head, so an organization whose edges all point at the
    Internet lies left of it and one whose edges all leave it lies right of it; the arrowhead
    still shows which way mail flows (`dir=back` when the two differ).
    """
    tail, head = (INTERNET, server) if right else (server, INTERNET)
    if outbound == right:
        attrs["dir"] = "back"
    return f"{quote(tail)} -> {quote(head)} {_attrs(**attrs)};"


def _edges(loaded: LoadedSpec, *, right: bool) -> Iterator[str]:
    """Outbound address spaces to the Internet; inbound domains (MX) from it."""
    edges: list[tuple[tuple[str, str, str], str]] = []
    for site in loaded.spec.sites:
        for server in site.servers:
            ims = _ims(server)
            if ims is None:
                continue
            node = server_id(loaded.name, server.name)
            for space in ims.address_spaces:
                label = space_label(space, site, server)
                # As in the GWART: a connector that sends nothing out offers no route.
                style = "solid" if ims.transfer_mode.outbound else "dotted"
                if not ims.transfer_mode.outbound:
                    label += f"\ninactive: {ims.transfer_mode.value}"
                line = _edge(node, outbound=True, right=right, label=label, style=style)
                edges.append(((server.name.casefold(), "1", label), line))
            if ims.transfer_mode.inbound:
                for domain in sorted(ims.domains or loaded.spec.organization.domains):
                    label = f"MX {domain}"
                    line = _edge(
                        node,
                        outbound=False,
                        right=right,
                        label=label,
                        style="dashed",
                        color="#1f77b4",
                        fontcolor="#1f77b4",
                    )
                    edges.append(((server.name.casefold(), "2", label), line))
    for _, line in sorted(edges):
        yield INDENT + line


def render_dot(specs: Sequence[LoadedSpec]) -> str:
    """The organizations, drawn together around one shared Internet node, as DOT text."""
    ordered = sorted(specs, key=lambda s: (s.name.casefold(), s.name))
    lines = [
        "digraph mailwright {",
        f'{INDENT}graph [rankdir="LR", compound="true", fontname="Helvetica", newrank="true"];',
        f'{INDENT}node [fontname="Helvetica", fontsize="10"];',
        f'{INDENT}edge [fontname="Helvetica", fontsize="9"];',
        f"{INDENT}{quote(INTERNET)} "
        + _attrs(label="Internet", shape="doublecircle", style="filled", fillcolor="#d5e8d4")
        + ";",
    ]
    for loaded in ordered:
        lines += _organization(loaded, 1)
    for index, loaded in enumerate(ordered):
        # Organizations alternate left and right of the Internet they share.
        lines += _edges(loaded, right=index % 2 == 1)
    lines.append("}")
    return "\n".join(lines) + "\n"
