"""The `inmesh ztunnel` sub-commands (wiring only: parse arguments, build settings, call run)."""

from __future__ import annotations

import logging
import os

import typer

from inmesh.errors import ConfigError
from inmesh.ztunnel.settings import ZtunnelSettings


def register(app: typer.Typer) -> None:
    """Add the `ztunnel` command to the root app."""
    app.command("ztunnel")(ztunnel)


def ztunnel(
    node: str = typer.Option(..., "--node", help="Name of the node this ztunnel serves."),
    zds_socket: str = typer.Option(..., "--zds-socket", help="Path of the agent's ZDS socket."),
    admin_addr: str = typer.Option("127.0.0.1:15000", help="Admin server (/config_dump)."),
    metrics_addr: str = typer.Option("0.0.0.0:15020", help="Metrics server (/metrics)."),
    readiness_addr: str = typer.Option("0.0.0.0:15021", help="Readiness (/healthz/ready)."),
    drain_deadline: float = typer.Option(
        5.0, help="Seconds live connections may run after SIGTERM before they are reset."),
    connect_timeout: float = typer.Option(10.0, help="Upstream connect timeout in seconds."),
    listen_backlog: int = typer.Option(128, help="Accept queue length of in-pod listeners."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    controlplane: str | None = typer.Option(
        None, "--controlplane",
        help="Control plane (CA + xDS): host:port or unix:/path. Without it every connection "
             "stays plaintext passthrough."),
    node_credentials: str | None = typer.Option(
        None, "--node-credentials",
        help="Node credential dir (from `inmesh controlplane node-credential`)."),
    trust_domain: str = typer.Option(
        "cluster.local", "--trust-domain",
        help="Trust domain of pods whose workload names none in xDS."),
    inbound_workers: int | None = typer.Option(
        None, "--inbound-workers", min=0, max=64,
        help="Processes serving the pods' HBONE port 15008 beside ztunnel (with a control "
             "plane only). Default: 1 if the machine has more than one CPU, else 0."),
) -> None:
    """Run ztunnel in the node's netns: a proxy inside every pod the agent hands over by ZDS."""
    from inmesh.ztunnel import app as ztunnel_app
    from inmesh.ztunnel.settings import MeshSettings, ProxySettings

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("hpack", "h2"):  # per-frame debug lines would drown ztunnel's own
        logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger().level))
    if (controlplane is None) != (node_credentials is None):
        raise typer.BadParameter("--controlplane and --node-credentials go together",
                                 param_hint="--controlplane")
    try:
        mesh = None
        if controlplane is not None and node_credentials is not None:
            mesh = MeshSettings(controlplane=controlplane, node_credentials=node_credentials,
                                trust_domain=trust_domain)
        settings = ZtunnelSettings(
            node_name=node,
            zds_socket=zds_socket,
            admin_addr=ZtunnelSettings.addr(admin_addr),
            metrics_addr=ZtunnelSettings.addr(metrics_addr),
            readiness_addr=ZtunnelSettings.addr(readiness_addr),
            drain_deadline=drain_deadline,
            proxy=ProxySettings(connect_timeout=connect_timeout, listen_backlog=listen_backlog),
            mesh=mesh,
            inbound_workers=(1 if (os.cpu_count() or 1) > 1 else 0)
            if inbound_workers is None else inbound_workers,
        )
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        status = ztunnel_app.run(settings)
    except ConfigError as exc:  # e.g. an unreadable node credential dir
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(status)
