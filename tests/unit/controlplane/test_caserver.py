"""The CA over real mutual-TLS gRPC with real node credentials: who gets what, and the status
codes of every refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from inmesh.caapi import ca_pb2, ca_pb2_grpc
from inmesh.controlplane.caserver import CHANNEL_OPTIONS, node_channel_credentials
from inmesh.controlplane.nodecreds import NODE_CA_KEY_FILE
from inmesh.identity import SpiffeId
from inmesh.pki import (
    certificate_pem,
    generate_key,
    load_certificate,
    load_certificates,
    load_private_key,
    make_csr,
    private_key_pem,
    uri_sans,
    validity,
    verify_chain,
)
from inmesh.pki.build import build_leaf_certificate
from inmesh.pki.nodecred import node_identity_uri
from tests.unit.pki.helpers import DB, TD, WEB

from .caharness import RPC_TIMEOUT, CaWorld, run, running_ca


def _request(identity: SpiffeId | None = WEB, csr_for: SpiffeId = WEB, ttl: int = 0,
             csr: str | None = None, **metadata: Any) -> ca_pb2.IstioCertificateRequest:
    md = struct_pb2.Struct()
    if identity is not None:
        md.update({"ImpersonatedIdentity": identity.uri})
    md.update(metadata)
    return ca_pb2.IstioCertificateRequest(
        csr=csr if csr is not None else make_csr(generate_key(), csr_for).decode(),
        validity_duration=ttl, metadata=md,
    )


async def _call(target: str, creds: Any, request: ca_pb2.IstioCertificateRequest) -> list[str]:
    async with grpc.aio.secure_channel(target, creds, CHANNEL_OPTIONS) as channel:
        stub = ca_pb2_grpc.IstioCertificateServiceStub(channel)
        response = await stub.CreateCertificate(request, timeout=RPC_TIMEOUT)
        return list(response.cert_chain)


async def _as_node(world: CaWorld, node: str, request: ca_pb2.IstioCertificateRequest) -> list[str]:
    return await _call(world.target, node_channel_credentials(world.node_dir(node)), request)


async def _refused(world: CaWorld, creds: Any, request: ca_pb2.IstioCertificateRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _call(world.target, creds, request)
    return info.value


def _assert_issued_for(world: CaWorld, chain: list[str], identity: SpiffeId) -> None:
    leaf = load_certificate(chain[0])
    assert uri_sans(leaf) == (identity.uri,)
    assert chain[-1].encode() == world.ca.root_pem
    verify_chain(leaf, [], load_certificates(world.ca.root_pem), validity(leaf)[0])


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_allowed_request_returns_a_chain_to_the_root_with_exactly_the_impersonated_id(
    tmp_path: Path, unix: bool
) -> None:
    async def body() -> None:
        async with running_ca(tmp_path, unix=unix) as world:
            world.add_pod("web-1", "worker-1")
            chain = await _as_node(world, "worker-1", _request(WEB, csr_for=DB))
            _assert_issued_for(world, chain, WEB)
            assert all(c.endswith("\n") for c in chain)
    run(body())


def test_without_metadata_the_csr_san_is_the_requested_identity(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            world.add_pod("db-1", "worker-1", sa="db")
            _assert_issued_for(world, await _as_node(world, "worker-1", _request(None, csr_for=DB)), DB)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _as_node(world, "worker-1", _request(None, csr_for=WEB))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    run(body())


def test_validity_duration_is_honoured(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            world.add_pod("web-1", "worker-1")
            chain = await _as_node(world, "worker-1", _request(ttl=3600))
            not_before, not_after = validity(load_certificate(chain[0]))
            assert (not_after - not_before).total_seconds() == 3600 + world.ca.settings.backdate
    run(body())


def test_identity_not_on_the_callers_node_is_permission_denied_with_the_reason(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            world.add_pod("web-1", "worker-2")
            world.node_dir("worker-1")
            error = await _refused(world, node_channel_credentials(world.node_dir("worker-1")), _request(WEB))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error.details() == (
                "node 'worker-1' may not have spiffe://cluster.local/ns/shop/sa/web: no pod of "
                "service account 'web' in namespace 'shop' runs on node 'worker-1'")
    run(body())


def test_foreign_trust_domain_is_permission_denied(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            world.add_pod("web-1", "worker-1")
            other = SpiffeId("evil.example", "shop", "web")
            error = await _refused(world, node_channel_credentials(world.node_dir("worker-1")), _request(other))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not in trust domain 'cluster.local'" in (error.details() or "")
    run(body())


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (_request(csr="garbage"), "bad CSR: CSR is not a PEM PKCS#10 request"),
        (_request(None, ImpersonatedIdentity=7), "must be a string, got float"),
        (_request(None, ImpersonatedIdentity="spiffe://cluster.local/web"), "not a workload SPIFFE ID"),
        (_request(ttl=-5), "validity_duration must not be negative"),
    ],
    ids=["garbage-csr", "number-identity", "bad-identity", "negative-ttl"],
)
def test_malformed_requests_are_invalid_argument(
    tmp_path: Path, request_: ca_pb2.IstioCertificateRequest, error: str
) -> None:
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            world.add_pod("web-1", "worker-1")
            failure = await _refused(world, node_channel_credentials(world.node_dir("worker-1")), request_)
            assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error in (failure.details() or "")
    run(body())


def test_no_client_certificate_is_refused_at_tls(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            world.add_pod("web-1", "worker-1")
            creds = grpc.ssl_channel_credentials(root_certificates=world.node_ca.node_ca_pem)
            error = await _refused(world, creds, _request())
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    run(body())


def test_a_node_cert_from_another_ca_is_refused_at_tls(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path / "ours") as world, running_ca(tmp_path / "theirs") as other:
            world.add_pod("web-1", "worker-1")
            theirs = other.node_ca.issue("worker-1")
            creds = grpc.ssl_channel_credentials(
                root_certificates=world.node_ca.node_ca_pem,  # trusts our server, presents theirs
                private_key=theirs.key_pem, certificate_chain=theirs.cert_pem)
            error = await _refused(world, creds, _request())
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    run(body())


def test_a_node_ca_cert_that_is_not_a_node_identity_is_unauthenticated(tmp_path: Path) -> None:
    """Chains to the node CA (so TLS accepts it) but names a workload, not a node."""
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            world.add_pod("web-1", "worker-1")
            ca_key = load_private_key((tmp_path / "state" / NODE_CA_KEY_FILE).read_bytes())
            ca_cert = load_certificate(world.node_ca.node_ca_pem)
            key = generate_key()
            not_before, not_after = validity(ca_cert)
            cert = build_leaf_certificate(ca_cert, ca_key, key.public_key(), not_before, not_after,
                                          uris=[WEB.uri], server_auth=False)
            creds = grpc.ssl_channel_credentials(
                root_certificates=world.node_ca.node_ca_pem,
                private_key=private_key_pem(key), certificate_chain=certificate_pem(cert))
            error = await _refused(world, creds, _request())
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "not a node credential" in (error.details() or "")
    run(body())


def test_a_node_of_another_trust_domain_is_unauthenticated(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            ca_key = load_private_key((tmp_path / "state" / NODE_CA_KEY_FILE).read_bytes())
            ca_cert = load_certificate(world.node_ca.node_ca_pem)
            key = generate_key()
            cert = build_leaf_certificate(ca_cert, ca_key, key.public_key(), *validity(ca_cert),
                                          uris=[node_identity_uri("other.td", "worker-1")],
                                          server_auth=False)
            creds = grpc.ssl_channel_credentials(
                root_certificates=world.node_ca.node_ca_pem,
                private_key=private_key_pem(key), certificate_chain=certificate_pem(cert))
            error = await _refused(world, creds, _request())
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert TD in (error.details() or "")
    run(body())


def test_a_ca_that_can_not_sign_is_internal_not_the_callers_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            world.add_pod("web-1", "worker-1")
            expired_at = load_certificate(world.ca.root_pem).not_valid_after_utc
            monkeypatch.setattr(world.ca, "_clock", lambda: expired_at)
            error = await _refused(world, node_channel_credentials(world.node_dir("worker-1")), _request())
            assert error.code() == grpc.StatusCode.INTERNAL
            assert "CA certificate expired" in (error.details() or "")
    run(body())
