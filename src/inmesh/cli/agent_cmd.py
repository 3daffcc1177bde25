"""The `inmesh agent` command (wiring only: parse arguments, build settings, call run)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from inmesh.errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command("agent")
    def agent(
        node: str = typer.Option(..., help="Name of the node this agent serves."),
        store: Path = typer.Option(..., help="Cluster store (pod source) file."),
        run_dir: Path = typer.Option(Path("/var/run/inmesh"), help="Plugin socket directory."),
        zds_socket: Path = typer.Option(
            Path("/var/run/ztunnel/ztunnel.sock"), help="ZDS socket the proxy connects to."
        ),
        state_dir: Path = typer.Option(Path("/var/lib/inmesh/agent"), help="Durable state."),
        backend: str = typer.Option("auto", help="Rule backend: auto, iptables or nftables."),
        exclude_namespace: list[str] = typer.Option(
            ["kube-system"], help="Namespaces never enrolled (repeatable)."
        ),
        drift_check_interval: float = typer.Option(
            10.0, help="Seconds between verifications of every enrolled pod's rules."
        ),
        log_level: str = typer.Option("info", help="debug, info, warning or error."),
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
                excluded_namespaces=frozenset(exclude_namespace),
                drift_check_interval=drift_check_interval,
            )
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from exc
        run(settings)
