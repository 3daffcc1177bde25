"""Certificate builders shared by the mesh CA and the node CA: CA certificates (self-signed roots
or intermediates) and leaf certificates with only SANs as identity. Everything is signed with
SHA-256, serials are random, and a leaf never outlives its issuer (its not_after is clamped)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from inmesh.pki.keys import SigningKey


def ca_subject(trust_domain: str, common_name: str) -> x509.Name:
    """``O=<trust domain>, CN=<name>``: istiod names its self-signed root ``O=<trust domain>``."""
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def build_ca_certificate(
    key: SigningKey,
    subject: x509.Name,
    not_before: datetime,
    not_after: datetime,
    *,
    issuer: tuple[x509.Certificate, SigningKey] | None = None,
    path_length: int | None = None,
) -> x509.Certificate:
    """A CA certificate for ``key``: self-signed when ``issuer`` is None, else signed by it."""
    issuer_name, issuer_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        _base(subject, issuer_name, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(_aki(issuer[0] if issuer else None, issuer_key.public_key()), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def build_leaf_certificate(
    issuer_cert: x509.Certificate,
    issuer_key: SigningKey,
    public_key: CertificatePublicKeyTypes,
    not_before: datetime,
    not_after: datetime,
    *,
    uris: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    server_auth: bool = True,
    client_auth: bool = True,
) -> x509.Certificate:
    """A leaf with an empty subject whose only identity is its (critical) SAN extension."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns_names]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server_auth
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] * client_auth
    not_after = min(not_after, issuer_cert.not_valid_after_utc)
    rsa_key = isinstance(public_key, rsa.RSAPublicKey)  # keyEncipherment only makes sense for RSA
    builder = (
        _base(x509.Name([]), issuer_cert.subject, public_key, not_before, not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=rsa_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(_aki(issuer_cert, issuer_key.public_key()), critical=False)
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _base(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: CertificatePublicKeyTypes,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _aki(
    issuer_cert: x509.Certificate | None, issuer_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
) -> x509.AuthorityKeyIdentifier:
    """From the issuer's SKI when it has one (RFC 5280 4.2.1.1), else from its key."""
    if issuer_cert is None:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key)
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(
    *, digital_signature: bool = False, key_encipherment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
