"""The `inmesh cni` sub-commands (wiring only: parse arguments, build settings, call run)."""

from __future__ import annotations

from typing import Annotated

import typer

from inmesh.cni.event import DEFAULT_AGENT_RUN_DIR, DEFAULT_AGENT_TIMEOUT_SECONDS
from inmesh.cni.install import install, uninstall, wait_for_primary_config
from inmesh.errors import ConfigError, InmeshError

cni_app = typer.Typer(
    name="cni",
    help="Install the inmesh-cni chained plugin on this node, or remove it.",
    no_args_is_help=True,
)

ConfDir = Annotated[str, typer.Option("--conf-dir", help="CNI config dir (e.g. /etc/cni/net.d).")]
BinDir = Annotated[str, typer.Option("--bin-dir", help="CNI plugin dir (e.g. /opt/cni/bin).")]


def _fail(exc: InmeshError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2 if isinstance(exc, ConfigError) else 1)


@cni_app.command("install")
def install_cmd(
    conf_dir: ConfDir,
    bin_dir: BinDir,
    agent_run_dir: Annotated[
        str, typer.Option("--agent-run-dir", help="Where the agent's pluginevent.sock lives.")
    ] = DEFAULT_AGENT_RUN_DIR,
    exclude_namespace: Annotated[
        list[str] | None,
        typer.Option("--exclude-namespace", help="Never ask the agent about this namespace."),
    ] = None,
    agent_timeout: Annotated[
        float, typer.Option("--agent-timeout", help="Seconds ADD waits for the agent.")
    ] = DEFAULT_AGENT_TIMEOUT_SECONDS,
    pod_source: Annotated[
        str,
        typer.Option(
            "--pod-source",
            help="Cluster store the plugin reads when the agent is down: non-mesh pods may start.",
        ),
    ] = "",
    wait: Annotated[
        float,
        typer.Option("--wait", help="Seconds to wait for the primary CNI config (0: fail now)."),
    ] = 0.0,
) -> None:
    """Copy inmesh-cni into BIN_DIR and chain it last into the primary config in CONF_DIR."""
    try:
        if wait > 0:
            wait_for_primary_config(conf_dir, wait)
        result = install(
            conf_dir,
            bin_dir,
            agent_run_dir,
            tuple(exclude_namespace or ()),
            agent_timeout_seconds=agent_timeout,
            pod_source=pod_source,
        )
    except InmeshError as exc:
        raise _fail(exc) from exc
    state = "installed" if result.changed else "already installed"
    wrapped = f" (wrapped {result.wrapped_from})" if result.wrapped_from else ""
    typer.echo(f"inmesh-cni {state}: {result.binary_path}, chained in {result.conf_path}{wrapped}")


@cni_app.command("uninstall")
def uninstall_cmd(conf_dir: ConfDir, bin_dir: BinDir) -> None:
    """Take inmesh-cni out of the chain (restoring the original file) and remove the binary."""
    try:
        uninstall(conf_dir, bin_dir)
    except InmeshError as exc:
        raise _fail(exc) from exc
    typer.echo(f"inmesh-cni removed from {conf_dir} and {bin_dir}")


def register(app: typer.Typer) -> None:
    """Add `inmesh cni ...` to the root app."""
    app.add_typer(cni_app)
