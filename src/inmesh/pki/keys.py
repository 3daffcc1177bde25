"""Keys of the mesh: workload keys are ECDSA P-256 (as Istio's ztunnel makes them), stored as
unencrypted PKCS#8 PEM. The CA accepts CSR keys that are P-256 or RSA of at least 2048 bits, and
signing keys that are EC (P-256, P-384) or RSA of at least 2048 bits."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from inmesh.pki.errors import PkiError, parsing

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""A key that may sign certificates or CSRs."""

MIN_RSA_BITS = 2048
"""Smallest RSA modulus accepted anywhere (NIST SP 800-131A; istiod refuses less too)."""
_SIGNING_CURVES = (ec.SECP256R1, ec.SECP384R1)


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: SigningKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes, what: str = "private key") -> SigningKey:
    """Parse an unencrypted PEM key that may sign (EC P-256/P-384 or RSA >= 2048 bits)."""
    with parsing(f"{what} is not an unencrypted PEM private key"):
        key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, _SIGNING_CURVES):
        return key
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= MIN_RSA_BITS:
        return key
    raise PkiError(f"{what}: {describe_key(key.public_key())} cannot sign in this mesh "
                   f"(need ECDSA P-256/P-384 or RSA >= {MIN_RSA_BITS} bits)")


def check_workload_key(key: PublicKeyTypes, what: str = "CSR key") -> None:
    """Refuse anything but ECDSA P-256 or RSA >= 2048 bits, naming what was found."""
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return
    raise PkiError(f"{what} is {describe_key(key)}; the mesh accepts only ECDSA P-256 or "
                   f"RSA >= {MIN_RSA_BITS} bits")


def describe_key(key: PublicKeyTypes) -> str:
    """A short human name of a public key: ``ECDSA secp384r1``, ``RSA 1024 bits``, ``Ed25519``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    return type(key).__name__.removeprefix("_").replace("PublicKey", "") or "an unknown key"


def same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    """Whether two public keys are the same key (compared by their DER encoding)."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return a.public_bytes(der, fmt) == b.public_bytes(der, fmt)
