"""`inmesh controlplane serve` as a real process: mTLS with node credentials, the node
authorizer, discovery of redirected pods, and a root that survives restarts."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from inmesh.caapi import CHANNEL_OPTIONS
from inmesh.cluster.model import PodMeta
from inmesh.controlplane.caserver import node_channel_credentials
from inmesh.identity import SpiffeId
from inmesh.pki import generate_key, make_csr
from inmesh.ztunnel.certs import CaFetchError, GrpcCaClient
from inmesh.ztunnel.workloads import WorkloadTable
from inmesh.ztunnel.xdsclient import XdsClient
from tests.system.cpharness import ControlPlane, control_plane

INMESH = str(Path(sys.executable).with_name("inmesh"))


@pytest.fixture
def cp() -> Iterator[ControlPlane]:
    with control_plane() as plane:
        yield plane


def fetch(cp: ControlPlane, node: str, ident: SpiffeId) -> list[str]:
    async def go() -> list[str]:
        async with GrpcCaClient(cp.target, cp.credential(node)) as client:
            return await client.fetch(make_csr(generate_key(), ident), ident, 3600)

    return asyncio.run(go())


def test_ca_signs_only_identities_of_pods_on_the_callers_node(cp: ControlPlane) -> None:
    cp.store.put_pod(PodMeta(uid="u1", name="web", namespace="shop", node="n1",
                             service_account="web-sa", ips=("10.244.1.2",)))
    cp.start()
    web = SpiffeId.for_workload("shop", "web-sa")
    chain = fetch(cp, "n1", web)
    assert len(chain) == 2
    assert chain[-1] == (cp.state / "root-cert.pem").read_text()
    with pytest.raises(CaFetchError, match="PERMISSION_DENIED"):
        fetch(cp, "n2", web)  # no such pod on n2
    with pytest.raises(CaFetchError, match="PERMISSION_DENIED"):
        fetch(cp, "n1", SpiffeId.for_workload("shop", "db"))
    assert oct(os.stat(cp.state / "root-key.pem").st_mode & 0o777) == "0o600"


def test_root_survives_a_restart(cp: ControlPlane) -> None:
    cp.start()
    root = (cp.state / "root-cert.pem").read_bytes()
    cp.stop()
    cp.start()
    assert (cp.state / "root-cert.pem").read_bytes() == root


def test_discovery_marks_pods_hbone_once_redirected(cp: ControlPlane) -> None:
    cp.store.put_pod(PodMeta(uid="u1", name="web", namespace="shop", node="n1",
                             ips=("10.244.1.2",)))
    cp.start()
    cred = cp.credential("n1")

    async def go() -> None:
        table = WorkloadTable()

        def channel() -> grpc.aio.Channel:
            return grpc.aio.secure_channel(cp.target, node_channel_credentials(cred),
                                           options=CHANNEL_OPTIONS)

        client = XdsClient(channel, "ztunnel~n1", table)
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.wait_synced(), 10)
            assert not table.hbone_capable("10.244.1.2")
            cp.store.annotate("u1", "ambient.istio.io/redirection", "enabled")
            for _ in range(200):
                if table.hbone_capable("10.244.1.2"):
                    break
                await asyncio.sleep(0.05)
            assert table.hbone_capable("10.244.1.2")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(go())


def test_a_client_without_a_node_credential_is_refused(cp: ControlPlane, tmp_path: Path) -> None:
    cp.start()

    async def go() -> None:
        async with grpc.aio.insecure_channel(cp.target) as channel:
            call = channel.unary_unary("/istio.v1.auth.IstioCertificateService/CreateCertificate")
            with pytest.raises(grpc.aio.AioRpcError):
                await asyncio.wait_for(call(b""), 5)

    asyncio.run(go())
