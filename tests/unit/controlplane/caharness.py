"""A real CA gRPC server for tests: mesh root + node CA in a tmp state dir, mutual TLS on
127.0.0.1:0 (or a unix socket), the pods-on-node authorizer over a view the test can change."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import grpc

from inmesh.cluster.model import ClusterView, PodMeta
from inmesh.controlplane.ca import CertificateAuthority
from inmesh.controlplane.caauth import pods_on_node_authorizer
from inmesh.controlplane.caserver import CaService, add_ca_service, server_credentials
from inmesh.controlplane.nodecreds import NodeCa
from tests.unit.pki.helpers import TD

T = TypeVar("T")

TEST_TIMEOUT = 20.0
"""Upper bound for one async test body; a hang fails instead of blocking the suite."""
RPC_TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT))


@dataclass
class CaWorld:
    tmp: Path
    ca: CertificateAuthority
    node_ca: NodeCa
    target: str
    pods: dict[str, PodMeta] = field(default_factory=dict)

    def view(self) -> ClusterView:
        return ClusterView(pods=MappingProxyType(dict(self.pods)))

    def add_pod(self, name: str, node: str, namespace: str = "shop", sa: str = "web") -> None:
        self.pods[name] = PodMeta(uid=name, name=name, namespace=namespace, node=node,
                                  service_account=sa)

    def node_dir(self, node: str) -> Path:
        """A node credential dir for ``node`` (issued on first use)."""
        directory = self.tmp / f"node-{node}"
        if not directory.exists():
            self.node_ca.issue(node, directory)
        return directory


@asynccontextmanager
async def running_ca(tmp_path: Path, *, unix: bool = False) -> AsyncIterator[CaWorld]:
    state = tmp_path / "state"
    ca = CertificateAuthority.load_or_create(state, TD)
    node_ca = NodeCa.load_or_create(state, TD, ca.root_pem)
    world = CaWorld(tmp_path, ca, node_ca, target="")
    server = grpc.aio.server()
    add_ca_service(server, CaService(ca, pods_on_node_authorizer(world.view, TD), TD))
    creds = server_credentials(node_ca.node_ca_pem, *node_ca.serving_credential())
    sock_dir = tempfile.mkdtemp(prefix="imca-") if unix else None  # short: sun_path is 108 bytes
    if sock_dir is not None:
        world.target = f"unix:{sock_dir}/ca.sock"
        server.add_secure_port(world.target, creds)
    else:
        world.target = f"127.0.0.1:{server.add_secure_port('127.0.0.1:0', creds)}"
    await server.start()
    try:
        yield world
    finally:
        await server.stop(None)
        if sock_dir is not None:
            shutil.rmtree(sock_dir, ignore_errors=True)
