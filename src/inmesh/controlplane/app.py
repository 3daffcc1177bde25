"""The `inmesh controlplane` process: the mesh CA and workload discovery on one mTLS gRPC port.

Proxies authenticate with node credentials (signed by the node CA, never by the mesh root); the
CA signs a workload identity only for a node that runs a pod with that identity; discovery
pushes every workload to every node, HBONE-capable once its agent reported it redirected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import grpc

from inmesh.cluster.store import FileClusterStore
from inmesh.controlplane.ca import CertificateAuthority
from inmesh.controlplane.caauth import pods_on_node_authorizer
from inmesh.controlplane.caserver import CaService, add_ca_service, server_credentials
from inmesh.controlplane.discovery import StoreWorkloadSource
from inmesh.controlplane.nodecreds import NodeCa
from inmesh.controlplane.settings import ControlPlaneSettings
from inmesh.xds.server import AdsServer

log = logging.getLogger(__name__)

SERVER_OPTIONS = (
    ("grpc.max_send_message_length", 200 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
"""Large messages for a full workload state; keepalives so dead nodes are noticed."""


def load_authorities(settings: ControlPlaneSettings) -> tuple[CertificateAuthority, NodeCa]:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.state_dir, 0o700)
    if settings.root_cert is not None and settings.root_key is not None:
        ca = CertificateAuthority.from_files(
            settings.root_cert, settings.root_key, settings.trust_domain
        )
    else:
        ca = CertificateAuthority.load_or_create(settings.state_dir, settings.trust_domain)
    node_ca = NodeCa.load_or_create(settings.state_dir, settings.trust_domain, ca.root_pem)
    return ca, node_ca


async def serve(settings: ControlPlaneSettings) -> None:
    ca, node_ca = load_authorities(settings)
    store = FileClusterStore(str(settings.store))
    discovery = StoreWorkloadSource(store, settings.trust_domain, settings.cluster_id)
    server = grpc.aio.server(options=SERVER_OPTIONS)
    authorizer = pods_on_node_authorizer(store.view, settings.trust_domain)
    add_ca_service(server, CaService(ca, authorizer, settings.trust_domain, settings.cert_ttl))
    AdsServer(discovery).add_to_server(server)
    if settings.listen.startswith("unix:"):
        path = settings.listen.removeprefix("unix:").removeprefix("//")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    server.add_secure_port(
        settings.listen, server_credentials(node_ca.node_ca_pem, *node_ca.serving_credential())
    )
    await server.start()
    log.info("control plane serving CA and discovery on %s (trust domain %s)",
             settings.listen, settings.trust_domain)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(discovery.run(), name="discovery")
        await stop.wait()
        log.info("control plane stopping")
        await server.stop(settings.shutdown_grace)
        watcher.cancel()


def run(settings: ControlPlaneSettings) -> None:
    asyncio.run(serve(settings))


def issue_node_credential(settings: ControlPlaneSettings, node: str, out: str) -> str:
    """Write a node's credential (key, cert, node CA, mesh root) into ``out``; returns its id."""
    _, node_ca = load_authorities(settings)
    cred = node_ca.issue(node)
    cred.write(Path(out))
    td, name = cred.node_identity()
    return f"spiffe://{td}/inmesh-node/{name}"
