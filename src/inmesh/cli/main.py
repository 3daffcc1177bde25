"""Entry point of the `inmesh` command: composes the per-process sub-commands."""

from __future__ import annotations

import typer

from inmesh import __version__
from inmesh.cli import agent_cmd, cni_cmd, controlplane_cmd, lab_cmd, ztunnel_cmd

app = typer.Typer(
    name="inmesh",
    help="Sidecar-less service mesh data plane with in-pod traffic redirection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"inmesh {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """inmesh: agent, ztunnel, CNI installer and a local lab."""


agent_cmd.register(app)
ztunnel_cmd.register(app)
cni_cmd.register(app)
controlplane_cmd.register(app)
lab_cmd.register(app)


def main() -> None:
    app()
