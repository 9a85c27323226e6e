"""Commands that run hosts anywhere: bundle, host run, lab exec.

`mailwright bundle SERVER --out DIR` writes the self-contained bundle of one applied server;
`mailwright host run DIR` serves it, as the local supervisor serves its own bundles, on a
machine of its own, under systemd or in a container. `mailwright lab exec NAME -- COMMAND`
runs a command inside a namespace of the netns runtime's lab.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mailwright.compiler.cli.errors import CommandError
from mailwright.compiler.cli.params import DEFAULT_STATE, StateOption
from mailwright.compiler.state import StateDir
from mailwright.runtime.bundle import state_credentials, write_bundle
from mailwright.runtime.contract import WELL_KNOWN_PORTS

group = typer.Typer()
host = typer.Typer(help="Run one server from its bundle.", no_args_is_help=True)
lab = typer.Typer(help="The netns runtime's lab of network namespaces.", no_args_is_help=True)
group.add_typer(host, name="host")
group.add_typer(lab, name="lab")


@group.command()
def bundle(
    server: Annotated[str, typer.Argument(help="The server: NAME or ORG/NAME.")],
    out: Annotated[Path, typer.Option("--out", help="The folder to write the bundle to.")],
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Write the bundle of an applied server: its config, its organization's artifacts, its
    certificate (key 0600) and the organization's CAs; the same bytes for the same state."""
    state_dir = StateDir(state)
    serial = state_dir.read().serial
    if not serial:
        raise CommandError(f"nothing is applied in {state}; run `mailwright apply` first")
    tree = state_dir.artifacts(serial)
    organization, name = _server(tree, server)
    credentials = state_credentials(state_dir.path, organization, name)
    write_bundle(tree / organization, name, out, serial, credentials)
    print(out)


def _server(tree: Path, wanted: str) -> tuple[str, str]:
    """(organization, server) of `wanted`, NAME or ORG/NAME, among the applied hosts."""
    hosts = sorted((p.parents[1].name, p.stem) for p in tree.glob("*/hosts/*.json"))
    found = [h for h in hosts if wanted in (h[1], "/".join(h))]
    if len(found) != 1:
        known = ", ".join("/".join(h) for h in hosts)
        why = "names servers of several organizations" if found else "is no applied server"
        raise CommandError(f"{wanted} {why}; the applied servers are {known}")
    return found[0]


@host.command("run")
def host_run(
    path: Annotated[Path, typer.Argument(help="The bundle (mailwright bundle).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Its queue, store and logs (default: BUNDLE.data)."),
    ] = None,
    bind: Annotated[
        str | None, typer.Option("--bind", help="The address to listen on (default: its ipv4).")
    ] = None,
) -> None:
    """Serve the roles of one server from its bundle until SIGTERM, on the spec's ports."""
    # Imported here: the host's event loop and servers are for this command only.
    from mailwright.runtime.host.process import run  # noqa: PLC0415

    folder = data or path.with_name(path.name + ".data")
    code = run(path, folder, bind, WELL_KNOWN_PORTS)
    if code:
        raise typer.Exit(code)


@lab.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lab_exec(
    name: Annotated[str, typer.Argument(help="A server's name, or `internet`.")],
    command: Annotated[list[str], typer.Argument(help="The command and its arguments.")],
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Run COMMAND inside the lab namespace NAME (mailwright lab exec athena -- dig MX x)."""
    from mailwright.runtime.lab import Lab  # noqa: PLC0415 - the lab only for this command

    argv = [*Lab(state / "runtime").exec_prefix(name), *command]
    os.execvp(argv[0], argv)
