"""TLS contexts and the SPIFFE checks on the peer (the handshakes themselves are exercised in
test_client_server and test_refusals)."""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from inmesh.errors import ConfigError, RemoteProtocolError
from inmesh.hbone.tls import (
    client_context,
    peer_certificate,
    peer_identity,
    server_context,
    spiffe_uris,
)

from .certs import Authority
from .helpers import CLIENT_ID, SERVER_ID, Pki


def cert_of(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_contexts_are_tls13_only_with_alpn_h2_and_verified_peers(pki: Pki) -> None:
    server = pki.server_ctx()
    client = pki.client_ctx()
    for ctx in (server, client):
        assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.get_ca_certs()[0]["subject"] == ((("organizationName", "mesh root"),),)
    assert not client.check_hostname
    assert server.num_tickets == 0  # no resumption, as Istio


def test_server_accepts_any_workload_of_its_trust_domain(pki: Pki) -> None:
    assert peer_identity(cert_of(pki.client.chain_pem), trust_domain="cluster.local") == CLIENT_ID


def test_server_refuses_another_trust_domain(pki: Pki) -> None:
    with pytest.raises(RemoteProtocolError, match=r"outside trust domain 'cluster\.local'"):
        peer_identity(cert_of(pki.other_domain_client.chain_pem), trust_domain="cluster.local")


def test_client_requires_one_of_the_expected_identities(pki: Pki) -> None:
    cert = cert_of(pki.server.chain_pem)
    assert peer_identity(cert, expected=[CLIENT_ID, SERVER_ID]) == SERVER_ID
    with pytest.raises(RemoteProtocolError, match=r"expected spiffe://cluster\.local/ns/shop/sa/web"):
        peer_identity(cert, expected=[CLIENT_ID])


def test_dns_names_never_count_as_identity(pki: Pki) -> None:
    only_dns = pki.root.issue(dns=("db.shop.svc",))
    with pytest.raises(RemoteProtocolError, match="exactly one SPIFFE ID, it has 0"):
        peer_identity(cert_of(only_dns.chain_pem), expected=[SERVER_ID])
    assert spiffe_uris(cert_of(pki.server.chain_pem)) == [SERVER_ID.uri]  # DNS SAN ignored


def test_two_spiffe_ids_are_refused(pki: Pki) -> None:
    double = pki.root.issue(CLIENT_ID.uri, SERVER_ID.uri)
    with pytest.raises(RemoteProtocolError, match="it has 2"):
        peer_identity(cert_of(double.chain_pem), trust_domain="cluster.local")


def test_non_workload_spiffe_ids_are_refused(pki: Pki) -> None:
    node = pki.root.issue("spiffe://cluster.local/inmesh-node/node-1")
    with pytest.raises(RemoteProtocolError, match="not a workload identity"):
        peer_identity(cert_of(node.chain_pem), trust_domain="cluster.local")


def test_peer_may_be_given_as_der_and_no_certificate_is_an_error(pki: Pki) -> None:
    der = cert_of(pki.client.chain_pem).public_bytes(Encoding.DER)
    assert peer_identity(der) == CLIENT_ID
    with pytest.raises(RemoteProtocolError, match="no certificate"):
        peer_certificate(b"")
    with pytest.raises(RemoteProtocolError, match="does not parse"):
        peer_certificate(b"\x30\x03junk")


def test_bad_credentials_are_config_errors(pki: Pki) -> None:
    cred = pki.client
    with pytest.raises(ConfigError, match="trust roots"):
        client_context(cred.chain_pem, cred.key_pem, b"not a pem")
    other_key = Authority.create("x").issue(CLIENT_ID.uri).key_pem
    with pytest.raises(ConfigError, match="chain or key"):
        server_context(cred.chain_pem, other_key, cred.roots_pem)
