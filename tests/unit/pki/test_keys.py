"""Keys: P-256 generation, PKCS#8 PEM, what may sign, what a CSR may carry."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from inmesh.pki import PkiError, generate_key, load_private_key, private_key_pem
from inmesh.pki.keys import check_workload_key, describe_key, same_public_key


def test_generated_keys_are_p256_and_distinct() -> None:
    a, b = generate_key(), generate_key()
    assert isinstance(a.curve, ec.SECP256R1)
    assert not same_public_key(a.public_key(), b.public_key())


def test_private_key_pem_is_unencrypted_pkcs8_and_round_trips() -> None:
    key = generate_key()
    data = private_key_pem(key)
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert same_public_key(load_private_key(data).public_key(), key.public_key())


def test_load_private_key_accepts_p384_and_rsa2048_signing_keys() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert isinstance(load_private_key(private_key_pem(p384)), ec.EllipticCurvePrivateKey)
    assert isinstance(load_private_key(private_key_pem(rsa2048)), rsa.RSAPrivateKey)


def test_load_private_key_refuses_weak_or_foreign_keys_and_garbage() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(PkiError, match=r"ca\.key: RSA 1024 bits cannot sign"):
        load_private_key(private_key_pem(weak), "ca.key")
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(PkiError, match="Ed25519 cannot sign"):
        load_private_key(ed)
    with pytest.raises(PkiError, match="not an unencrypted PEM private key"):
        load_private_key(b"junk")


def test_load_private_key_refuses_an_encrypted_key_with_a_clear_error() -> None:
    enc = generate_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(PkiError, match="not an unencrypted PEM private key"):
        load_private_key(enc)


def test_workload_key_rule_and_key_names() -> None:
    check_workload_key(generate_key().public_key())
    with pytest.raises(PkiError, match="ECDSA secp384r1"):
        check_workload_key(ec.generate_private_key(ec.SECP384R1()).public_key())
    assert describe_key(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()) == "RSA 2048 bits"
