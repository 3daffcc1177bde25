"""Node credentials of the lab: each node's ztunnel presents one to the control plane.

They are issued by the control plane's node CA from its state dir (the lab plays the operator
who runs `inmesh controlplane node-credential`), into ``<node dir>/credentials``. A credential
is kept across `up`s and issued again only when the one on disk no longer fits: missing or
broken, from another node CA or mesh root, for another node or trust domain, or near expiry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from inmesh.controlplane.app import load_authorities
from inmesh.controlplane.nodecreds import NodeCa
from inmesh.controlplane.settings import ControlPlaneSettings
from inmesh.errors import ConfigError
from inmesh.pki import NodeCredential, PkiError, load_certificate, validity

RENEW_BEFORE = timedelta(days=7)
"""A node credential with less life left than this is replaced at the next `up`: node
credentials live a year, and a lab that is brought up again should not run into the expiry."""


@dataclass(frozen=True)
class Authorities:
    """What a node credential must match: the node CA that signs it and the mesh root it carries."""

    trust_domain: str
    node_ca_pem: bytes
    root_pem: bytes


def credential_problem(
    directory: Path, node: str, expected: Authorities, now: datetime
) -> str | None:
    """Why the credential in ``directory`` can not serve ``node``, or None if it can."""
    try:
        cred = NodeCredential.load(directory)
        identity = cred.node_identity()
        _, not_after = validity(load_certificate(cred.cert_pem))
    except (ConfigError, PkiError) as exc:
        return f"unusable ({exc})" if directory.exists() else "none yet"
    if cred.node_ca_pem != expected.node_ca_pem:
        return "signed by another node CA"
    if cred.root_pem != expected.root_pem:
        return "carries another mesh root"
    if identity != (expected.trust_domain, node):
        return f"issued to node {identity[1]!r} in trust domain {identity[0]!r}"
    if not_after - now < RENEW_BEFORE:
        return f"expires {not_after.isoformat()}"
    return None


class CredentialIssuer:
    """The control plane's authorities, loaded (or created, 0600) from its state dir."""

    def __init__(self, state_dir: Path, store: Path, trust_domain: str) -> None:
        settings = ControlPlaneSettings(state_dir=state_dir, store=store,
                                        trust_domain=trust_domain)
        ca, self._node_ca = load_authorities(settings)
        self.expected = Authorities(trust_domain, self._node_ca.node_ca_pem, ca.root_pem)

    @property
    def node_ca(self) -> NodeCa:
        return self._node_ca

    def ensure(self, dirs: Mapping[str, Path], now: datetime) -> dict[str, str]:
        """Issue a credential for every node (name -> dir) whose one does not fit; returns the
        nodes issued anew with the reason."""
        issued: dict[str, str] = {}
        for node, directory in dirs.items():
            problem = credential_problem(directory, node, self.expected, now)
            if problem is not None:
                self._node_ca.issue(node, directory)
                issued[node] = problem
        return issued
