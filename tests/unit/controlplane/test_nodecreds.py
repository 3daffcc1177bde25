"""The node CA: made once and kept, issues node credentials that chain to it (never to the mesh
root) and the control plane's serving cert."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from inmesh.controlplane.ca import CertificateAuthority
from inmesh.controlplane.nodecreds import NODE_CA_CERT_FILE, NODE_CA_KEY_FILE, NodeCa
from inmesh.errors import ConfigError
from inmesh.pki import (
    NodeCredential,
    PkiError,
    dns_sans,
    load_certificate,
    load_certificates,
    load_private_key,
    uri_sans,
    verify_chain,
)
from tests.unit.pki.helpers import T0, TD


def _authorities(state: Path) -> tuple[CertificateAuthority, NodeCa]:
    ca = CertificateAuthority.load_or_create(state, TD, clock=lambda: T0)
    return ca, NodeCa.load_or_create(state, TD, ca.root_pem, clock=lambda: T0)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_node_ca_is_created_once_0600_and_separate_from_the_mesh_root(tmp_path: Path) -> None:
    ca, node_ca = _authorities(tmp_path)
    for name in (NODE_CA_KEY_FILE, NODE_CA_CERT_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert node_ca.node_ca_pem != ca.root_pem
    _, again = _authorities(tmp_path)
    assert again.node_ca_pem == node_ca.node_ca_pem == (tmp_path / NODE_CA_CERT_FILE).read_bytes()


def test_issue_writes_the_four_files_0600(tmp_path: Path) -> None:
    ca, node_ca = _authorities(tmp_path / "state")
    cred = node_ca.issue("worker-1", tmp_path / "creds")
    files = {p.name: p for p in (tmp_path / "creds").iterdir()}
    assert sorted(files) == ["node-ca.pem", "node-cert.pem", "node-key.pem", "root-cert.pem"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in files.values()} == {0o600}
    assert files["root-cert.pem"].read_bytes() == ca.root_pem
    assert files["node-ca.pem"].read_bytes() == node_ca.node_ca_pem
    assert NodeCredential.load(tmp_path / "creds") == cred


def test_node_cert_names_the_node_chains_to_the_node_ca_and_not_to_the_mesh_root(tmp_path: Path) -> None:
    ca, node_ca = _authorities(tmp_path)
    cred = node_ca.issue("worker-1")
    cert = load_certificate(cred.cert_pem)
    assert uri_sans(cert) == ("spiffe://cluster.local/inmesh-node/worker-1",)
    assert cred.node_identity() == (TD, "worker-1")
    assert _eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert load_private_key(cred.key_pem).public_key() == cert.public_key()
    verify_chain(cert, [], load_certificates(node_ca.node_ca_pem), T0)
    with pytest.raises(PkiError, match="does not chain"):
        verify_chain(cert, [], load_certificates(ca.root_pem), T0)
    assert cert.not_valid_after_utc == T0 + timedelta(days=365)


def test_each_issue_makes_a_new_key(tmp_path: Path) -> None:
    _, node_ca = _authorities(tmp_path)
    assert node_ca.issue("a").key_pem != node_ca.issue("a").key_pem


def test_serving_cert_is_for_inmesh_controlplane_and_server_auth_only(tmp_path: Path) -> None:
    _, node_ca = _authorities(tmp_path)
    key_pem, cert_pem = node_ca.serving_credential()
    cert = load_certificate(cert_pem)
    assert dns_sans(cert) == ("inmesh-controlplane",)
    assert uri_sans(cert) == ()
    assert _eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert load_private_key(key_pem).public_key() == cert.public_key()
    verify_chain(cert, [], load_certificates(node_ca.node_ca_pem), T0)


def test_invalid_node_names_are_refused(tmp_path: Path) -> None:
    _, node_ca = _authorities(tmp_path)
    with pytest.raises(ConfigError, match="invalid node name"):
        node_ca.issue("Bad_Name")
