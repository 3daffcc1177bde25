"""PEM chains in and out: splitting, strict loading, SAN and validity reading."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from inmesh.pki import (
    PkiError,
    certificate_pem,
    dns_sans,
    load_certificate,
    load_certificates,
    split_pem_chain,
    uri_sans,
    validity,
)
from inmesh.pki.build import build_leaf_certificate
from inmesh.pki.pem import is_self_signed, san_is_critical

from .helpers import DB, T0, WEB, intermediate_ca, leaf, pem, root_ca

ROOT = root_ca()
INTER = intermediate_ca(ROOT)
_, LEAF = leaf(INTER)
CHAIN = (LEAF, INTER[1], ROOT[1])


def test_split_keeps_order_and_gives_one_pem_per_cert_each_ending_with_newline() -> None:
    parts = split_pem_chain(pem(*CHAIN))
    assert parts == tuple(certificate_pem(c) for c in CHAIN)
    assert all(p.endswith(b"-----END CERTIFICATE-----\n") and p.count(b"BEGIN") == 1 for p in parts)


def test_split_accepts_text_and_ignores_explanatory_text_between_blocks() -> None:
    text = "leaf:\n" + certificate_pem(LEAF).decode() + "\nroot follows\n" + certificate_pem(ROOT[1]).decode()
    assert split_pem_chain(text) == (certificate_pem(LEAF), certificate_pem(ROOT[1]))


def test_split_normalizes_crlf_line_endings() -> None:
    crlf = pem(LEAF).replace(b"\n", b"\r\n")
    assert split_pem_chain(crlf) == (certificate_pem(LEAF),)


@pytest.mark.parametrize("bad", [b"", b"no pem here", pem(LEAF)[:-40]])
def test_split_refuses_input_without_a_whole_certificate(bad: bytes) -> None:
    with pytest.raises(PkiError, match="not PEM certificates"):
        split_pem_chain(bad)


def test_load_certificate_wants_exactly_one() -> None:
    assert load_certificate(pem(LEAF)) == LEAF
    with pytest.raises(PkiError, match="exactly one certificate, found 2"):
        load_certificate(pem(LEAF, ROOT[1]), "the leaf")


def test_uri_and_dns_sans_in_order_and_empty_without_san() -> None:
    key, cert = leaf(ROOT, uris=(WEB.uri, DB.uri))
    assert uri_sans(cert) == (WEB.uri, DB.uri)
    assert dns_sans(cert) == ()
    assert san_is_critical(cert)
    dns = build_leaf_certificate(ROOT[1], ROOT[0], key.public_key(), T0, T0 + timedelta(hours=1),
                                 dns_names=["a.example", "b.example"])
    assert dns_sans(dns) == ("a.example", "b.example")
    assert uri_sans(ROOT[1]) == ()
    assert not san_is_critical(ROOT[1])


def test_validity_is_aware_utc() -> None:
    not_before, not_after = validity(LEAF)
    assert not_before == T0
    assert not_after == T0 + timedelta(hours=24)
    assert not_before.tzinfo is not None


def test_is_self_signed_only_for_the_root() -> None:
    assert is_self_signed(ROOT[1])
    assert not is_self_signed(INTER[1])
    assert not is_self_signed(LEAF)


_SEPARATORS = st.text(alphabet=st.characters(blacklist_characters="-", codec="ascii"), max_size=40)


@given(
    st.lists(st.sampled_from(CHAIN), min_size=1, max_size=4),
    st.lists(_SEPARATORS, min_size=5, max_size=5),
)
def test_split_finds_every_cert_whatever_text_surrounds_them(
    certs: list[x509.Certificate], seps: list[str]
) -> None:
    text = seps[0]
    for i, c in enumerate(certs):
        text += certificate_pem(c).decode() + seps[i + 1] + "\n"
    assert split_pem_chain(text) == tuple(certificate_pem(c) for c in certs)


_CHAIN_PEM = pem(*CHAIN)


@given(st.integers(0, len(_CHAIN_PEM) - 1), st.integers(0, 255))
def test_a_mutated_chain_parses_or_raises_pki_error(pos: int, value: int) -> None:
    mutated = bytearray(_CHAIN_PEM)
    mutated[pos] = value
    try:
        certs = load_certificates(bytes(mutated))
    except PkiError:
        return
    assert 1 <= len(certs) <= len(CHAIN)
    for cert in certs:  # what parsed can be read without any other exception escaping
        assert validity(cert)[0] <= validity(cert)[1] or not is_self_signed(cert)
        try:
            uri_sans(cert)
        except PkiError:
            continue


@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_pki_error(data: bytes) -> None:
    with pytest.raises(PkiError):
        split_pem_chain(data)
