"""CertBundle: adopting a CA response only if it is what was asked for; half-life refresh."""

from __future__ import annotations

from datetime import timedelta

import pytest

from inmesh.pki import CertBundle, PkiError, certificate_pem, generate_key, private_key_pem
from inmesh.pki.keys import SigningKey

from .helpers import CA, DB, T0, WEB, intermediate_ca, leaf, pem, root_ca

ROOT = root_ca()
INTER = intermediate_ca(ROOT)


def _response(
    issuer: CA, *chain: bytes, uris: tuple[str, ...] = (WEB.uri,), hours: int = 24
) -> tuple[SigningKey, list[str]]:
    """A CA answer for a fresh key: the leaf from ``issuer``, then ``chain`` as given."""
    key = generate_key()
    _, cert = leaf(issuer, key=key, uris=uris, hours=hours)
    return key, [certificate_pem(cert).decode(), *(c.decode() for c in chain)]


def test_bundle_from_a_root_signed_response() -> None:
    key, chain = _response(ROOT, pem(ROOT[1]))
    bundle = CertBundle.from_response(WEB, private_key_pem(key), chain, T0)
    assert bundle.identity == WEB
    assert bundle.chain_pem == (chain[0].encode(),)
    assert bundle.roots_pem == pem(ROOT[1])
    assert bundle.cert_chain_pem == chain[0].encode()
    assert (bundle.not_before, bundle.not_after) == (T0, T0 + timedelta(hours=24))
    assert "PRIVATE" not in repr(bundle)


def test_refresh_at_half_life_and_expiry() -> None:
    key, chain = _response(ROOT, pem(ROOT[1]), hours=10)
    bundle = CertBundle.from_response(WEB, private_key_pem(key), chain, T0)
    assert bundle.refresh_at() == T0 + timedelta(hours=5)
    assert not bundle.expired(T0 + timedelta(hours=10) - timedelta(microseconds=1))
    assert bundle.expired(T0 + timedelta(hours=10))


def test_intermediates_are_kept_in_the_chain_and_several_roots_in_the_last_element() -> None:
    other_root = root_ca(name="next root")
    key, chain = _response(INTER, pem(INTER[1]), pem(other_root[1], ROOT[1]))
    bundle = CertBundle.from_response(WEB, private_key_pem(key), chain, T0)
    assert bundle.chain_pem == (chain[0].encode(), pem(INTER[1]))
    assert bundle.roots_pem == pem(other_root[1], ROOT[1])


def test_refuses_a_response_without_a_root() -> None:
    key, chain = _response(ROOT)
    with pytest.raises(PkiError, match="has 1 element"):
        CertBundle.from_response(WEB, private_key_pem(key), chain, T0)


@pytest.mark.parametrize(
    ("uris", "error"),
    [((DB.uri,), "not exactly"), ((WEB.uri, DB.uri), "not exactly"), ((), "not exactly")],
)
def test_refuses_a_certificate_for_anything_but_exactly_the_identity(uris: tuple[str, ...], error: str) -> None:
    key, chain = _response(ROOT, pem(ROOT[1]), uris=uris)
    with pytest.raises(PkiError, match=error):
        CertBundle.from_response(WEB, private_key_pem(key), chain, T0)


def test_refuses_a_certificate_for_another_key() -> None:
    _, chain = _response(ROOT, pem(ROOT[1]))
    with pytest.raises(PkiError, match="different key"):
        CertBundle.from_response(WEB, private_key_pem(generate_key()), chain, T0)


def test_refuses_a_chain_that_does_not_verify() -> None:
    key, chain = _response(INTER, pem(ROOT[1]))  # the intermediate is missing
    with pytest.raises(PkiError, match="does not chain"):
        CertBundle.from_response(WEB, private_key_pem(key), chain, T0)


def test_refuses_garbage_elements() -> None:
    key, chain = _response(ROOT, pem(ROOT[1]))
    with pytest.raises(PkiError, match="root certificate set is not PEM"):
        CertBundle.from_response(WEB, private_key_pem(key), [chain[0], "garbage"], T0)
