"""Node credentials of the lab: issued once from the control plane's state dir, reissued only
when the one on disk no longer fits."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from inmesh.lab.credentials import RENEW_BEFORE, CredentialIssuer, credential_problem
from inmesh.pki import NodeCredential

NOW = datetime.now(UTC)


def _issuer(tmp_path: Path, state: str = "cp", td: str = "cluster.local") -> CredentialIssuer:
    return CredentialIssuer(tmp_path / state, tmp_path / "cluster.json", td)


def test_credentials_are_issued_once_and_then_kept(tmp_path: Path) -> None:
    issuer = _issuer(tmp_path)
    dirs = {"n1": tmp_path / "n1" / "credentials", "n2": tmp_path / "n2" / "credentials"}
    assert issuer.ensure(dirs, NOW) == {"n1": "none yet", "n2": "none yet"}
    key = (dirs["n1"] / "node-key.pem").read_bytes()
    assert _issuer(tmp_path).ensure(dirs, NOW) == {}  # a second `up`: same CA, nothing to do
    assert (dirs["n1"] / "node-key.pem").read_bytes() == key
    cred = NodeCredential.load(dirs["n2"])
    assert cred.node_identity() == ("cluster.local", "n2")
    assert cred.root_pem == (tmp_path / "cp" / "root-cert.pem").read_bytes()
    for f in ("node-key.pem", "root-key.pem", "node-ca-key.pem"):
        where = dirs["n1"] if f == "node-key.pem" else tmp_path / "cp"
        assert oct(os.stat(where / f).st_mode & 0o777) == "0o600"


def test_a_credential_from_another_ca_or_node_is_replaced(tmp_path: Path) -> None:
    ours, theirs = _issuer(tmp_path, "cp"), _issuer(tmp_path, "other-cp")
    d = tmp_path / "n1"
    theirs.ensure({"n1": d}, NOW)
    assert credential_problem(d, "n1", ours.expected, NOW) == "signed by another node CA"
    ours.ensure({"n1": d}, NOW)
    assert credential_problem(d, "n1", ours.expected, NOW) is None
    assert credential_problem(d, "n2", ours.expected, NOW) == (
        "issued to node 'n1' in trust domain 'cluster.local'"
    )


def test_other_trust_domain_broken_files_and_near_expiry_are_problems(tmp_path: Path) -> None:
    issuer = _issuer(tmp_path)
    d = tmp_path / "n1"
    issuer.ensure({"n1": d}, NOW)
    other_td = _issuer(tmp_path, td="example.org").expected
    assert credential_problem(d, "n1", other_td, NOW) == (
        "issued to node 'n1' in trust domain 'cluster.local'"
    )
    late = NOW + timedelta(days=365) - RENEW_BEFORE + timedelta(hours=1)
    assert (credential_problem(d, "n1", issuer.expected, late) or "").startswith("expires ")
    (d / "node-cert.pem").write_text("garbage")
    assert (credential_problem(d, "n1", issuer.expected, NOW) or "").startswith("unusable")
    assert credential_problem(tmp_path / "nowhere", "n1", issuer.expected, NOW) == "none yet"
