"""Certificate signing requests as Istio's ztunnel makes them (reference 8): PEM PKCS#10, SHA-256
signature, an EMPTY subject and a single critical URI SAN carrying the SPIFFE ID; nothing else.
`load_csr` is the CA's side: it checks the signature and the key type."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from inmesh.identity import SpiffeId
from inmesh.pki.errors import PkiError, parsing
from inmesh.pki.keys import SigningKey, check_workload_key


def make_csr(key: SigningKey, spiffe: SpiffeId) -> bytes:
    """A PEM CSR for ``spiffe``, signed by ``key`` with SHA-256."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe.uri)]),
            critical=True,
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes | str) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR; its signature must verify and its key must be P-256 or RSA >= 2048."""
    with parsing("CSR is not a PEM PKCS#10 request"):
        csr = x509.load_pem_x509_csr(pem.encode() if isinstance(pem, str) else pem)
        _ = csr.subject, csr.extensions, csr.attributes
        signed = csr.is_signature_valid
        key = csr.public_key()
    if not signed:
        raise PkiError("CSR signature does not verify with the CSR's own key")
    check_workload_key(key)
    return csr
