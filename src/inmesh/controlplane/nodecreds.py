"""The node CA: a second authority, separate from the mesh root, that signs only node
credentials (how a node's proxy authenticates to the control plane) and the control plane's own
serving certificate (DNS SAN ``inmesh-controlplane``). Its key and cert live in the state dir as
``node-ca-key.pem``/``node-ca-cert.pem`` (0600, created once, reused across restarts).

Node certificates never chain to the mesh root, so a stolen node credential can not be presented
as a workload identity on HBONE."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from inmesh.caapi import CONTROL_PLANE_NAME
from inmesh.controlplane.ca import DAY, Clock, load_or_create_self_signed, utcnow
from inmesh.errors import ConfigError
from inmesh.pki import NodeCredential, certificate_pem
from inmesh.pki.build import build_leaf_certificate, ca_subject
from inmesh.pki.keys import SigningKey, generate_key, private_key_pem
from inmesh.pki.nodecred import node_identity_uri

NODE_CA_KEY_FILE = "node-ca-key.pem"
NODE_CA_CERT_FILE = "node-ca-cert.pem"


@dataclass(frozen=True)
class NodeCaSettings:
    node_cert_validity: int = 365 * DAY
    """Seconds a node credential lives. Long, because re-issuing it is an operator action
    (``issue`` again); revoking a node means rotating the node CA."""
    serving_cert_validity: int = 365 * DAY
    """Seconds the control plane's serving cert lives; it is re-issued at every start."""
    ca_validity: int = 3650 * DAY
    """Seconds the node CA made by `NodeCa.load_or_create` lives (like the mesh root)."""
    backdate: int = 300
    """Seconds not_before is set in the past, for nodes whose clock is behind."""

    def __post_init__(self) -> None:
        for name in ("node_cert_validity", "serving_cert_validity", "ca_validity"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"node CA setting {name} must be positive")
        if self.backdate < 0:
            raise ConfigError("node CA setting backdate must be >= 0")


class NodeCa:
    """Issues node credentials and the control plane's serving cert. ``mesh_root_pem`` is the
    workload root put into every node credential dir as ``root-cert.pem``."""

    def __init__(
        self,
        trust_domain: str,
        key: SigningKey,
        cert: x509.Certificate,
        mesh_root_pem: bytes,
        settings: NodeCaSettings | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.trust_domain = trust_domain
        self.settings = settings or NodeCaSettings()
        self._key = key
        self._cert = cert
        self._mesh_root_pem = mesh_root_pem
        self._clock = clock

    @classmethod
    def load_or_create(
        cls,
        state_dir: Path,
        trust_domain: str,
        mesh_root_pem: bytes,
        settings: NodeCaSettings | None = None,
        clock: Clock = utcnow,
    ) -> NodeCa:
        settings = settings or NodeCaSettings()
        key, cert = load_or_create_self_signed(
            state_dir / NODE_CA_KEY_FILE, state_dir / NODE_CA_CERT_FILE,
            ca_subject(trust_domain, "inmesh node CA"), settings.ca_validity, clock(),
        )
        return cls(trust_domain, key, cert, mesh_root_pem, settings, clock)

    @property
    def node_ca_pem(self) -> bytes:
        return certificate_pem(self._cert)

    def issue(self, node: str, directory: Path | None = None) -> NodeCredential:
        """A fresh key and cert for ``node`` (URI SAN ``spiffe://<td>/inmesh-node/<node>``);
        written into ``directory`` (files 0600) when given."""
        key = generate_key()
        cert = self._leaf(key, self.settings.node_cert_validity,
                          uris=[node_identity_uri(self.trust_domain, node)], client=True)
        cred = NodeCredential(private_key_pem(key), certificate_pem(cert), self.node_ca_pem,
                              self._mesh_root_pem)
        if directory is not None:
            cred.write(directory)
        return cred

    def serving_credential(self) -> tuple[bytes, bytes]:
        """``(key_pem, cert_pem)`` for the control plane's gRPC server: DNS SAN
        ``inmesh-controlplane``, signed by the node CA (which clients trust as ``node-ca.pem``)."""
        key = generate_key()
        cert = self._leaf(key, self.settings.serving_cert_validity,
                          dns_names=[CONTROL_PLANE_NAME], client=False)
        return private_key_pem(key), certificate_pem(cert)

    def _leaf(
        self,
        key: SigningKey,
        validity: int,
        *,
        client: bool,
        uris: list[str] | None = None,
        dns_names: list[str] | None = None,
    ) -> x509.Certificate:
        now = self._clock()
        return build_leaf_certificate(
            self._cert, self._key, key.public_key(),
            now - timedelta(seconds=self.settings.backdate), now + timedelta(seconds=validity),
            uris=uris or (), dns_names=dns_names or (),
            server_auth=not client, client_auth=client,
        )
