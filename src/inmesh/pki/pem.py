"""PEM certificates in and out, and what the mesh reads from a certificate (URI and DNS SANs,
validity). Parsing is strict where it matters: a chain must hold at least one certificate, every
block labelled CERTIFICATE must parse, and errors are `PkiError` only. Text outside PEM blocks is
ignored (RFC 7468 allows explanatory text)."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from inmesh.pki.errors import PkiError, first_line, parsing


def load_certificates(data: bytes | str, what: str = "certificate chain") -> list[x509.Certificate]:
    """Every certificate of a PEM text, in order; at least one."""
    with parsing(f"{what} is not PEM certificates"):
        certs = x509.load_pem_x509_certificates(data.encode() if isinstance(data, str) else data)
        for cert in certs:  # parse the lazily parsed parts now, so that later reads can't fail
            _ = cert.subject, cert.issuer, cert.extensions, cert.public_key()
    return certs


def load_certificate(data: bytes | str, what: str = "certificate") -> x509.Certificate:
    """Exactly one PEM certificate."""
    certs = load_certificates(data, what)
    if len(certs) != 1:
        raise PkiError(f"{what} must hold exactly one certificate, found {len(certs)}")
    return certs[0]


def certificate_pem(cert: x509.Certificate) -> bytes:
    """One certificate as PEM, ending with a newline."""
    return cert.public_bytes(serialization.Encoding.PEM)


def split_pem_chain(data: bytes | str, what: str = "certificate chain") -> tuple[bytes, ...]:
    """One canonical PEM per certificate (each ends with ``\\n``), in the order given.

    This is how istiod flattens a multi-certificate PEM into ``cert_chain`` elements."""
    return tuple(certificate_pem(c) for c in load_certificates(data, what))


def uri_sans(cert: x509.Certificate | x509.CertificateSigningRequest) -> tuple[str, ...]:
    """The URI SANs of a certificate or CSR, in order (empty if it has no SAN extension)."""
    return tuple(_san(cert).get_values_for_type(x509.UniformResourceIdentifier))


def dns_sans(cert: x509.Certificate | x509.CertificateSigningRequest) -> tuple[str, ...]:
    """The DNS SANs of a certificate or CSR, in order."""
    return tuple(_san(cert).get_values_for_type(x509.DNSName))


def san_is_critical(cert: x509.Certificate | x509.CertificateSigningRequest) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    except x509.ExtensionNotFound:
        return False
    except ValueError as exc:
        raise PkiError(f"malformed extensions: {first_line(exc)}") from exc


def validity(cert: x509.Certificate) -> tuple[datetime, datetime]:
    """``(not_before, not_after)`` as timezone-aware UTC datetimes."""
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def is_self_signed(cert: x509.Certificate) -> bool:
    """Issuer equals subject and the certificate's own key verifies its signature."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _san(cert: x509.Certificate | x509.CertificateSigningRequest) -> x509.SubjectAlternativeName:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return x509.SubjectAlternativeName([])
    except ValueError as exc:
        raise PkiError(f"malformed extensions: {first_line(exc)}") from exc
