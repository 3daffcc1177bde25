"""Fixtures of the HBONE tests: one test PKI per session (EC keys are cheap, but not free)."""

from __future__ import annotations

import pytest

from .helpers import Pki


@pytest.fixture(scope="session")
def pki() -> Pki:
    return Pki.create()
