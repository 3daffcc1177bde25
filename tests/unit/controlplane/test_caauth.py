"""Who may get which certificate: the caller's node from its cert, the identity asked for, and
the pods-on-node authorizer."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from inmesh.cluster.model import ClusterView, PodMeta
from inmesh.controlplane.caauth import (
    CallerUnauthenticated,
    RequestDenied,
    RequestInvalid,
    caller_node,
    check_allowed,
    pods_on_node_authorizer,
    requested_identity,
)
from inmesh.identity import SpiffeId
from inmesh.pki import generate_key, load_csr, make_csr
from inmesh.pki.nodecred import node_identity_uri
from tests.unit.pki.helpers import DB, TD, WEB, leaf, pem, root_ca

NODE_CA = root_ca(name="node ca")


def _node_cert(*uris: str) -> bytes:
    return pem(leaf(NODE_CA, uris=uris)[1])


def _csr(*identities: SpiffeId) -> x509.CertificateSigningRequest:
    if len(identities) == 1:
        return load_csr(make_csr(generate_key(), identities[0]))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if identities:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(i.uri) for i in identities]), critical=True)
    return builder.sign(generate_key(), hashes.SHA256())


def test_caller_node_comes_from_the_node_uri_san() -> None:
    assert caller_node([_node_cert(node_identity_uri(TD, "worker-1"))], TD) == "worker-1"


@pytest.mark.parametrize(
    ("certs", "error"),
    [
        ([], "no client certificate"),
        ([b"junk"], "not PEM"),
        ([_node_cert(WEB.uri)], "not a node credential"),
        ([_node_cert()], "not a node credential"),
        ([_node_cert(node_identity_uri(TD, "a"), node_identity_uri(TD, "b"))], "not a node credential"),
        ([_node_cert(node_identity_uri("other.td", "a"))], "trust domain 'other.td'"),
    ],
)
def test_callers_without_a_node_identity_are_unauthenticated(certs: list[bytes], error: str) -> None:
    with pytest.raises(CallerUnauthenticated, match=error):
        caller_node(certs, TD)


def test_requested_identity_prefers_the_impersonated_identity() -> None:
    assert requested_identity({"ImpersonatedIdentity": WEB.uri}, _csr(DB)) == WEB


def test_requested_identity_falls_back_to_the_csr_san() -> None:
    assert requested_identity({}, _csr(DB)) == DB
    assert requested_identity({"ClusterID": "Kubernetes"}, _csr(DB)) == DB


@pytest.mark.parametrize(
    ("metadata", "csr", "error"),
    [
        ({"ImpersonatedIdentity": 3.0}, _csr(WEB), "must be a string, got float"),
        ({"ImpersonatedIdentity": ""}, _csr(WEB), "not a workload SPIFFE ID"),
        ({"ImpersonatedIdentity": "spiffe://cluster.local/inmesh-node/a"}, _csr(WEB), "not a workload"),
        ({}, _csr(), "0 URI SANs"),
        ({}, _csr(WEB, DB), "2 URI SANs"),
    ],
)
def test_bad_or_missing_identities_are_invalid_requests(
    metadata: dict[str, object], csr: x509.CertificateSigningRequest, error: str
) -> None:
    with pytest.raises(RequestInvalid, match=error):
        requested_identity(metadata, csr)


def _pod(name: str, node: str, ns: str = "shop", sa: str = "web", phase: str = "Running") -> PodMeta:
    return PodMeta(uid=name, name=name, namespace=ns, node=node, service_account=sa, phase=phase)


VIEW = ClusterView(pods=MappingProxyType({
    p.uid: p for p in (
        _pod("web-1", "worker-1"),
        _pod("db-1", "worker-2", sa="db"),
        _pod("db-old", "worker-1", sa="db", phase="Succeeded"),
    )
}))


def test_pods_on_node_authorizer_allows_only_identities_of_live_pods_on_the_node() -> None:
    authorize = pods_on_node_authorizer(lambda: VIEW, TD)
    assert authorize("worker-1", WEB) is None
    assert authorize("worker-2", DB) is None
    reason = authorize("worker-2", WEB)
    assert reason == "no pod of service account 'web' in namespace 'shop' runs on node 'worker-2'"
    assert authorize("worker-1", DB) is not None  # only a terminated db pod there
    assert authorize("worker-1", SpiffeId(TD, "other", "web")) is not None
    assert "trust domain" in (authorize("worker-1", SpiffeId("x.td", "shop", "web")) or "")


def test_pods_on_node_authorizer_reads_the_latest_view_every_time() -> None:
    views = [ClusterView(), VIEW]
    authorize = pods_on_node_authorizer(lambda: views[0], TD)
    assert authorize("worker-1", WEB) is not None
    views.pop(0)
    assert authorize("worker-1", WEB) is None


def test_check_allowed_denies_with_the_reason() -> None:
    check_allowed("n1", WEB, TD, lambda node, ident: None)
    with pytest.raises(RequestDenied, match=r"node 'n1' may not have .*: nope"):
        check_allowed("n1", WEB, TD, lambda node, ident: "nope")
    with pytest.raises(RequestDenied, match="not in trust domain"):
        check_allowed("n1", SpiffeId("x.td", "shop", "web"), TD, lambda node, ident: None)
