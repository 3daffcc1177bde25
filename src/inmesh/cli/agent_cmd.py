"""The `inmesh agent` command (wiring only: parse arguments, build settings, call run)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from inmesh.errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command("agent")
    def agent(
        node: Annotated[str, typer.Option(help="Name of the node this agent serves.")],
        store: Annotated[Path, typer.Option(help="Cluster store (pod source) file.")],
        run_dir: Annotated[Path, typer.Option(help="Plugin socket directory.")] = Path(
            "/var/run/inmesh"
        ),
        zds_socket: Annotated[
            Path, typer.Option(help="ZDS socket the proxy connects to.")
        ] = Path("/var/run/ztunnel/ztunnel.sock"),
        state_dir: Annotated[Path, typer.Option(help="Durable state.")] = Path(
            "/var/lib/inmesh/agent"
        ),
        backend: Annotated[
            str, typer.Option(help="Rule backend: auto, iptables or nftables.")
        ] = "auto",
        exclude_namespace: Annotated[
            list[str] | None, typer.Option(help="Namespaces never enrolled (repeatable).")
        ] = None,
        drift_check_interval: Annotated[
            float, typer.Option(help="Seconds between verifications of every pod's rules.")
        ] = 10.0,
        log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    ) -> None:
        """Run the node agent: enrolls pods, installs in-pod rules, serves ZDS to the proxy."""
        from inmesh.agent.app import run
        from inmesh.agent.settings import AgentSettings

        logging.basicConfig(
            level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            settings = AgentSettings(
                node=node,
                store=str(store),
                run_dir=str(run_dir),
                zds_socket=str(zds_socket),
                state_dir=str(state_dir),
                backend=backend,
                excluded_namespaces=frozenset(
                    ["kube-system"] if exclude_namespace is None else exclude_namespace
                ),
                drift_check_interval=drift_check_interval,
            )
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from exc
        run(settings)
