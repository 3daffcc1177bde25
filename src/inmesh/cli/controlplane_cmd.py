"""The `inmesh controlplane` commands: run the control plane, issue node credentials."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from inmesh.errors import InmeshError

app = typer.Typer(
    name="controlplane",
    help="The mesh CA (Istio's CreateCertificate API) and workload discovery (delta xDS).",
    no_args_is_help=True,
)

StateDir = Annotated[Path, typer.Option(help="CA state directory (keys 0600, created once).")]
TrustDomain = Annotated[str, typer.Option(help="SPIFFE trust domain of the mesh.")]


@app.command("serve")
def serve_cmd(
    state_dir: StateDir,
    store: Annotated[Path, typer.Option(help="Cluster store (pod source) file.")],
    listen: Annotated[
        str, typer.Option(help="gRPC address: host:port or unix:/path.")
    ] = "unix:/var/run/inmesh/controlplane.sock",
    trust_domain: TrustDomain = "cluster.local",
    cluster_id: Annotated[str, typer.Option(help="Cluster id in workload uids.")] = "Kubernetes",
    cert_ttl: Annotated[int, typer.Option(help="Default workload cert lifetime (s).")] = 86400,
    root_cert: Annotated[
        Path | None, typer.Option(help="Use this root or intermediate chain (PEM).")
    ] = None,
    root_key: Annotated[Path | None, typer.Option(help="Key of --root-cert.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the control plane: CA and discovery on one mutual-TLS gRPC port."""
    from inmesh.controlplane.app import run
    from inmesh.controlplane.settings import ControlPlaneSettings

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = ControlPlaneSettings(
            state_dir=state_dir, store=store, listen=listen, trust_domain=trust_domain,
            cluster_id=cluster_id, cert_ttl=cert_ttl, root_cert=root_cert, root_key=root_key,
        )
        run(settings)
    except InmeshError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("node-credential")
def node_credential_cmd(
    state_dir: StateDir,
    node: Annotated[str, typer.Option(help="Node name.")],
    out: Annotated[Path, typer.Option(help="Directory to write the credential into.")],
    trust_domain: TrustDomain = "cluster.local",
) -> None:
    """Issue a node credential (how a node's proxy authenticates to the control plane)."""
    from inmesh.controlplane.app import issue_node_credential
    from inmesh.controlplane.settings import ControlPlaneSettings

    try:
        settings = ControlPlaneSettings(
            state_dir=state_dir, store=Path("/dev/null"), trust_domain=trust_domain
        )
        ident = issue_node_credential(settings, node, str(out))
    except InmeshError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"node credential for {ident} written to {out}")


def register(root: typer.Typer) -> None:
    root.add_typer(app)
