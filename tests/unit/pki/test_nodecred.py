"""Node credential dirs: names, files, modes, and loading with clear errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import ConfigError
from inmesh.pki import NodeCredential, PkiError, generate_key, private_key_pem
from inmesh.pki.nodecred import (
    NODE_CERT_FILE,
    NODE_KEY_FILE,
    check_node_name,
    node_identity_uri,
    parse_node_identity,
)

from .helpers import TD, WEB, leaf, pem, root_ca

NODE_CA = root_ca(name="node ca")
MESH = root_ca(name="mesh root")


def _cred(node: str = "node-a", uris: tuple[str, ...] | None = None) -> NodeCredential:
    key, cert = leaf(NODE_CA, uris=uris or (node_identity_uri(TD, node),))
    return NodeCredential(private_key_pem(key), pem(cert), pem(NODE_CA[1]), pem(MESH[1]))


def test_node_identity_uri_and_parse() -> None:
    assert node_identity_uri(TD, "worker-1.lab") == "spiffe://cluster.local/inmesh-node/worker-1.lab"
    assert parse_node_identity("spiffe://cluster.local/inmesh-node/worker-1.lab") == (TD, "worker-1.lab")
    assert parse_node_identity(WEB.uri) is None
    assert parse_node_identity("spiffe://cluster.local/inmesh-node/") is None
    assert parse_node_identity("spiffe://cluster.local/inmesh-node/a/b") is None


@pytest.mark.parametrize("bad", ["", "Upper", "-lead", "trail-", "a/b", "a_b", "x" * 254])
def test_invalid_node_names_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid node name"):
        check_node_name(bad)


@given(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}", fullmatch=True))
def test_every_valid_node_name_round_trips_through_its_uri(node: str) -> None:
    assert parse_node_identity(node_identity_uri(TD, node)) == (TD, node)


def test_write_then_load_round_trips_with_private_modes(tmp_path: Path) -> None:
    cred = _cred()
    directory = tmp_path / "creds"
    cred.write(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == [
        "node-ca.pem", "node-cert.pem", "node-key.pem", "root-cert.pem"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {0o600}
    loaded = NodeCredential.load(directory)
    assert loaded == cred
    assert loaded.node_identity() == (TD, "node-a")
    assert "PRIVATE" not in repr(loaded)


def test_load_names_a_missing_file(tmp_path: Path) -> None:
    _cred().write(tmp_path)
    (tmp_path / NODE_KEY_FILE).unlink()
    with pytest.raises(ConfigError, match=r"node-key\.pem"):
        NodeCredential.load(tmp_path)


def test_load_refuses_a_key_that_is_not_the_certs(tmp_path: Path) -> None:
    _cred().write(tmp_path)
    (tmp_path / NODE_KEY_FILE).write_bytes(private_key_pem(generate_key()))
    with pytest.raises(ConfigError, match=r"node-key\.pem is not the key of node-cert\.pem"):
        NodeCredential.load(tmp_path)


def test_load_refuses_a_cert_that_is_not_a_node_identity(tmp_path: Path) -> None:
    _cred(uris=(WEB.uri,)).write(tmp_path)
    with pytest.raises(ConfigError, match="inmesh-node"):
        NodeCredential.load(tmp_path)
    (tmp_path / NODE_CERT_FILE).write_text("garbage")
    with pytest.raises(ConfigError, match=r"node-cert\.pem is not PEM"):
        NodeCredential.load(tmp_path)


def test_node_identity_wants_exactly_one_uri() -> None:
    with pytest.raises(PkiError, match="exactly one URI SAN"):
        _cred(uris=(node_identity_uri(TD, "a"), node_identity_uri(TD, "b"))).node_identity()
