"""CSRs as Istio's ztunnel makes them, and the CA-side parser's checks (reference 8)."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from inmesh.pki import PkiError, generate_key, load_csr, make_csr

from .helpers import WEB


def test_csr_has_empty_subject_one_critical_uri_san_p256_and_sha256() -> None:
    key = generate_key()
    csr = x509.load_pem_x509_csr(make_csr(key, WEB))
    assert csr.subject == x509.Name([])
    assert len(csr.extensions) == 1
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(WEB.uri)]
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    assert csr.is_signature_valid
    # the only attribute is the extensionRequest that carries the SAN (PKCS#9)
    assert [a.oid.dotted_string for a in csr.attributes] == ["1.2.840.113549.1.9.14"]


def test_csr_is_pem_pkcs10() -> None:
    data = make_csr(generate_key(), WEB)
    assert data.startswith(b"-----BEGIN CERTIFICATE REQUEST-----\n")
    assert data.endswith(b"-----END CERTIFICATE REQUEST-----\n")


def test_load_csr_accepts_our_csr_as_bytes_or_text() -> None:
    data = make_csr(generate_key(), WEB)
    assert load_csr(data).subject == load_csr(data.decode()).subject == x509.Name([])


def test_load_csr_accepts_rsa_2048() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert isinstance(load_csr(make_csr(key, WEB)).public_key(), rsa.RSAPublicKey)


@pytest.mark.parametrize(
    ("key", "named"),
    [
        (ec.generate_private_key(ec.SECP384R1()), "ECDSA secp384r1"),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA 1024 bits"),
    ],
)
def test_load_csr_refuses_keys_other_than_p256_or_rsa2048_naming_the_key(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, named: str
) -> None:
    with pytest.raises(PkiError, match=f"{named}.*only ECDSA P-256 or RSA >= 2048"):
        load_csr(make_csr(key, WEB))


def test_load_csr_refuses_ed25519() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, None)
    with pytest.raises(PkiError, match="Ed25519"):
        load_csr(csr.public_bytes(serialization.Encoding.PEM))


def test_load_csr_refuses_a_csr_whose_signature_does_not_verify() -> None:
    good = x509.load_pem_x509_csr(make_csr(generate_key(), WEB))
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x55  # inside the signature value
    body = base64.encodebytes(bytes(der))
    tampered = b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(PkiError, match=r"signature|not a PEM"):
        load_csr(tampered)


@pytest.mark.parametrize("garbage", [b"", b"hello", b"-----BEGIN CERTIFICATE REQUEST-----\n\n"])
def test_load_csr_refuses_garbage_with_pki_error(garbage: bytes) -> None:
    with pytest.raises(PkiError, match="not a PEM PKCS#10"):
        load_csr(garbage)


_GOOD = make_csr(generate_key(), WEB)


@given(st.integers(0, len(_GOOD) - 1), st.integers(0, 255))
def test_a_mutated_csr_either_parses_or_raises_pki_error(pos: int, value: int) -> None:
    mutated = bytearray(_GOOD)
    mutated[pos] = value
    try:
        csr = load_csr(bytes(mutated))
    except PkiError:
        return
    assert csr.is_signature_valid


@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_pki_error(data: bytes) -> None:
    with pytest.raises(PkiError):
        load_csr(data)


@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_pki_error(text: str) -> None:
    with pytest.raises(PkiError):
        load_csr(text)
