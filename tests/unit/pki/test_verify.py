"""Chain verification: what chains to a root, and the reasons things do not."""

from __future__ import annotations

from datetime import timedelta

import pytest

from inmesh.pki import PkiError, verify_chain
from inmesh.pki.build import build_leaf_certificate

from .helpers import DB, T0, intermediate_ca, leaf, root_ca

ROOT = root_ca()
INTER = intermediate_ca(ROOT)


def test_leaf_from_intermediate_verifies_with_the_intermediate_given() -> None:
    _, cert = leaf(INTER)
    assert verify_chain(cert, [INTER[1]], [ROOT[1]], T0) == [cert, INTER[1], ROOT[1]]


def test_leaf_from_intermediate_does_not_verify_without_it() -> None:
    _, cert = leaf(INTER)
    with pytest.raises(PkiError, match="does not chain to the trusted roots"):
        verify_chain(cert, [], [ROOT[1]], T0)


def test_leaf_from_another_root_does_not_verify() -> None:
    _, cert = leaf(root_ca(name="other root"))
    with pytest.raises(PkiError, match="does not chain"):
        verify_chain(cert, [], [ROOT[1]], T0)


def test_expired_or_not_yet_valid_leaf_does_not_verify() -> None:
    _, cert = leaf(ROOT, hours=1)
    verify_chain(cert, [], [ROOT[1]], T0 + timedelta(minutes=59))
    with pytest.raises(PkiError, match="does not chain"):
        verify_chain(cert, [], [ROOT[1]], T0 + timedelta(hours=2))
    with pytest.raises(PkiError, match="does not chain"):
        verify_chain(cert, [], [ROOT[1]], T0 - timedelta(minutes=1))


def test_a_leaf_can_not_act_as_a_ca() -> None:
    key, cert = leaf(ROOT)
    other = build_leaf_certificate(cert, key, key.public_key(), T0, T0 + timedelta(hours=1),
                                   uris=[DB.uri])
    with pytest.raises(PkiError, match="does not chain"):
        verify_chain(other, [cert], [ROOT[1]], T0)


def test_no_roots_is_an_error() -> None:
    _, cert = leaf(ROOT)
    with pytest.raises(PkiError, match="no roots"):
        verify_chain(cert, [], [], T0)
