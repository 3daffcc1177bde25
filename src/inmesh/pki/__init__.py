"""The mesh's PKI library (no sockets, no clocks of its own): keys, CSRs, certificate building,
PEM parsing, chain verification, the proxy's `CertBundle` and the node credential layout.

Used by the control plane's CA (`inmesh.controlplane.ca`) and by the proxy's certificate manager
(`inmesh.ztunnel.certs`). Every failure is a `PkiError`."""

from inmesh.pki.bundle import CertBundle
from inmesh.pki.csr import load_csr, make_csr
from inmesh.pki.errors import PkiError
from inmesh.pki.keys import SigningKey, generate_key, load_private_key, private_key_pem
from inmesh.pki.nodecred import NodeCredential
from inmesh.pki.pem import (
    certificate_pem,
    dns_sans,
    load_certificate,
    load_certificates,
    split_pem_chain,
    uri_sans,
    validity,
)
from inmesh.pki.verify import verify_chain

__all__ = [
    "CertBundle",
    "NodeCredential",
    "PkiError",
    "SigningKey",
    "certificate_pem",
    "dns_sans",
    "generate_key",
    "load_certificate",
    "load_certificates",
    "load_csr",
    "load_private_key",
    "make_csr",
    "private_key_pem",
    "split_pem_chain",
    "uri_sans",
    "validity",
    "verify_chain",
]
