"""A workload's credential as the proxy holds it: key, chain to present, roots to trust, and the
validity that drives renewal (refresh at half-life, as Istio's ztunnel does; reference 8).

`CertBundle.from_response` turns a CA's ``cert_chain`` (leaf first, root set last) into a bundle
after checking it is what was asked for: exactly the requested SPIFFE ID, our key, a valid chain."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from inmesh.identity import SpiffeId
from inmesh.pki.errors import PkiError
from inmesh.pki.keys import load_private_key, same_public_key
from inmesh.pki.pem import certificate_pem, load_certificate, load_certificates, uri_sans, validity
from inmesh.pki.verify import verify_chain


@dataclass(frozen=True)
class CertBundle:
    identity: SpiffeId
    key_pem: bytes = field(repr=False)
    """PKCS#8 PEM private key of the leaf."""
    chain_pem: tuple[bytes, ...]
    """Leaf first, then intermediates (what a TLS peer presents); the root is not included."""
    roots_pem: bytes
    """One or more concatenated PEM roots to verify peers against."""
    not_before: datetime
    not_after: datetime

    def refresh_at(self) -> datetime:
        """Half-life of the leaf: not_before + (not_after - not_before) / 2."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def expired(self, now: datetime) -> bool:
        return now >= self.not_after

    @property
    def cert_chain_pem(self) -> bytes:
        """Leaf and intermediates concatenated, as ``ssl.SSLContext.load_cert_chain`` wants."""
        return b"".join(self.chain_pem)

    @classmethod
    def from_response(
        cls,
        identity: SpiffeId,
        key_pem: bytes,
        cert_chain: Sequence[str | bytes],
        now: datetime,
    ) -> CertBundle:
        """Check and adopt a CA response; `PkiError` says what is wrong with it."""
        if len(cert_chain) < 2:
            raise PkiError(f"CA response for {identity} has {len(cert_chain)} element(s); "
                           "expected the leaf first and the root set last")
        leaf = load_certificate(cert_chain[0], f"leaf certificate for {identity}")
        intermediates = [
            c for pem in cert_chain[1:-1] for c in load_certificates(pem, "intermediate")
        ]
        roots = load_certificates(cert_chain[-1], "root certificate set")
        if uri_sans(leaf) != (identity.uri,):
            raise PkiError(f"CA issued a certificate for {list(uri_sans(leaf))}, "
                           f"not exactly [{identity.uri!r}]")
        if not same_public_key(leaf.public_key(), load_private_key(key_pem).public_key()):
            raise PkiError(f"CA issued the certificate for {identity} to a different key")
        verify_chain(leaf, intermediates, roots, now)
        not_before, not_after = validity(leaf)
        return cls(
            identity=identity,
            key_pem=key_pem,
            chain_pem=(certificate_pem(leaf), *(certificate_pem(c) for c in intermediates)),
            roots_pem=b"".join(certificate_pem(r) for r in roots),
            not_before=not_before,
            not_after=not_after,
        )
