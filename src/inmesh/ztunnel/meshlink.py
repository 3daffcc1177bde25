"""ztunnel's link to the control plane: delta xDS into a `WorkloadTable` and a `CertManager`
fetching workload certificates from the CA, both over mutual TLS with the node credential.

`MeshLink` owns the xDS task, the CA channel and the certificate workers; `mesh` is what the pod
proxies use. Ready once the first xDS state is applied (Istio's "state manager" blocker).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc

from inmesh.caapi import CHANNEL_OPTIONS
from inmesh.pki import NodeCredential
from inmesh.ztunnel.certs import CertManager, GrpcCaClient
from inmesh.ztunnel.mesh import Mesh
from inmesh.ztunnel.settings import MeshSettings
from inmesh.ztunnel.workloads import WorkloadTable
from inmesh.ztunnel.xdsclient import XdsClient

log = logging.getLogger(__name__)

__all__ = ["MeshLink", "xds_node_id"]

XDS_BLOCKER = "xds sync"


def xds_node_id(node: str) -> str:
    """A stable xDS node id shaped like Istio's ``ztunnel~<ip>~<pod>.<ns>~<ns>.svc.<domain>``
    (the control plane identifies the node by its certificate, not by this string)."""
    return f"ztunnel~0.0.0.0~ztunnel-{node}.inmesh~inmesh.svc.cluster.local"


class MeshLink:
    """See the module docstring. `ConfigError` at construction if the credential dir is bad."""

    def __init__(self, settings: MeshSettings, node: str) -> None:
        cred_dir = Path(settings.node_credentials)
        cred = NodeCredential.load(cred_dir)
        creds = grpc.ssl_channel_credentials(root_certificates=cred.node_ca_pem,
                                             private_key=cred.key_pem,
                                             certificate_chain=cred.cert_pem)
        self.target = settings.controlplane
        self.table = WorkloadTable()
        self._ca = GrpcCaClient(settings.controlplane, cred_dir)
        self.certs = CertManager(self._ca)
        self.xds = XdsClient(
            lambda: grpc.aio.secure_channel(settings.controlplane, creds, CHANNEL_OPTIONS),
            xds_node_id(node), self.table)
        self.mesh = Mesh(self.table, self.certs, node=node, trust_domain=settings.trust_domain,
                         hbone=settings.hbone)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start streaming xDS (reconnecting with back-off until `close`)."""
        self._task = asyncio.get_running_loop().create_task(self.xds.run(), name="xds-client")

    async def wait_synced(self) -> None:
        await self.xds.wait_synced()

    def readiness_blockers(self) -> list[str]:
        return [] if self.xds.synced else [XDS_BLOCKER]

    def dump(self) -> dict[str, Any]:
        return {
            "controlplane": self.target,
            "trustDomain": self.mesh.trust_domain,
            "xds": {"synced": self.xds.synced, "connected": self.xds.connected,
                    "nacks": self.xds.nacks},
            "workloads": self.table.dump(),
            "certificates": self.certs.dump(),
        }

    async def close(self) -> None:
        """Stop xDS, forget every certificate and key, close the CA channel."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.certs.aclose()
        await self._ca.close()
