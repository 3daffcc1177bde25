"""Node credentials: how a node's proxy proves to the control plane which node it runs on.

A node credential dir holds ``node-key.pem`` (0600), ``node-cert.pem`` (URI SAN
``spiffe://<td>/inmesh-node/<node>``, signed by the node CA), ``node-ca.pem`` (verifies the
control plane's serving cert) and ``root-cert.pem`` (the mesh root). Node certificates chain to the
node CA, never to the mesh root, so they can not pass as workload identities."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from inmesh.errors import ConfigError
from inmesh.pki._files import ensure_private_dir, write_private
from inmesh.pki.errors import PkiError
from inmesh.pki.keys import load_private_key, same_public_key
from inmesh.pki.pem import load_certificate, load_certificates, uri_sans

NODE_KEY_FILE = "node-key.pem"
NODE_CERT_FILE = "node-cert.pem"
NODE_CA_FILE = "node-ca.pem"
ROOT_CERT_FILE = "root-cert.pem"

_NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NODE_URI = re.compile(r"spiffe://(?P<td>[a-z0-9.\-_]{1,255})/inmesh-node/(?P<node>[^/]+)")
_MAX_NODE_NAME = 253


def check_node_name(node: str) -> str:
    """A Kubernetes node name (DNS subdomain, at most 253 characters), or `ConfigError`."""
    if len(node) > _MAX_NODE_NAME or not _NODE_NAME.fullmatch(node):
        raise ConfigError(f"invalid node name {node!r}: must be a lower-case DNS subdomain")
    return node


def node_identity_uri(trust_domain: str, node: str) -> str:
    return f"spiffe://{trust_domain}/inmesh-node/{check_node_name(node)}"


def parse_node_identity(uri: str) -> tuple[str, str] | None:
    """``(trust_domain, node)`` of a node identity URI, or None if it is not one."""
    m = _NODE_URI.fullmatch(uri)
    if m is None or not _NODE_NAME.fullmatch(m["node"]) or len(m["node"]) > _MAX_NODE_NAME:
        return None
    return m["td"], m["node"]


@dataclass(frozen=True)
class NodeCredential:
    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    node_ca_pem: bytes
    root_pem: bytes

    def write(self, directory: Path) -> None:
        """Write the four files (all 0600) into ``directory`` (created 0700 if missing)."""
        ensure_private_dir(directory)
        write_private(directory / NODE_KEY_FILE, self.key_pem)
        write_private(directory / NODE_CERT_FILE, self.cert_pem)
        write_private(directory / NODE_CA_FILE, self.node_ca_pem)
        write_private(directory / ROOT_CERT_FILE, self.root_pem)

    @classmethod
    def load(cls, directory: Path) -> NodeCredential:
        """Read a node credential dir; `ConfigError` names a missing or unreadable file."""
        files = (NODE_KEY_FILE, NODE_CERT_FILE, NODE_CA_FILE, ROOT_CERT_FILE)
        data = []
        for name in files:
            try:
                data.append((directory / name).read_bytes())
            except OSError as exc:
                raise ConfigError(f"node credential {directory / name}: {exc.strerror}") from exc
        cred = cls(*data)
        try:
            cred.node_identity()
            if not same_public_key(load_private_key(cred.key_pem).public_key(),
                                   load_certificate(cred.cert_pem).public_key()):
                raise PkiError(f"{NODE_KEY_FILE} is not the key of {NODE_CERT_FILE}")
            load_certificates(cred.node_ca_pem, NODE_CA_FILE)
            load_certificates(cred.root_pem, ROOT_CERT_FILE)
        except PkiError as exc:
            raise ConfigError(f"node credential dir {directory}: {exc}") from exc
        return cred

    def node_identity(self) -> tuple[str, str]:
        """``(trust_domain, node)`` from the node certificate's URI SAN."""
        uris = uri_sans(load_certificate(self.cert_pem, NODE_CERT_FILE))
        found = [parsed for uri in uris if (parsed := parse_node_identity(uri))]
        if len(uris) != 1 or not found:
            raise PkiError(f"{NODE_CERT_FILE} must carry exactly one URI SAN "
                           f"spiffe://<td>/inmesh-node/<node>, found {list(uris)}")
        return found[0]
