"""Chain verification: a leaf, the intermediates it came with, and the roots to trust. Uses
cryptography's X.509 path validation (RFC 5280 with web PKI extension rules for the CAs:
signatures, validity at ``now``, basicConstraints, keyUsage, chain depth). The leaf's own
extensions are not judged here: callers check its SANs, the TLS stack its key usages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.x509 import verification

from inmesh.pki.errors import PkiError, first_line

MAX_CHAIN_DEPTH = 8
"""Most intermediates between a leaf and a root. Istio setups use at most a root and one or two
intermediates; the bound stops a peer from making us walk a long chain."""


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
) -> list[x509.Certificate]:
    """The validated path (leaf first, trusted root last); `PkiError` saying why otherwise."""
    if not roots:
        raise PkiError("no roots to verify against")
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(roots)))
            .time(now)
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        return verifier.verify(leaf, list(intermediates)).chain
    except (verification.VerificationError, ValueError, TypeError) as exc:
        reason = first_line(exc)
        raise PkiError(f"certificate does not chain to the trusted roots: {reason}") from exc
