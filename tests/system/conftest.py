"""System tier: root, real network namespaces. Every namespace a test makes is removed after it.

Names start with ``imt-`` plus random hex so that parallel runs and helpers never collide.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from tests.system.nshelpers import NetnsFactory


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the system tier needs root (real namespaces): run scripts/test.sh as root")


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    factory = NetnsFactory(prefix=f"imt-{secrets.token_hex(3)}")
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def run() -> object:
    def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), check=check, capture_output=True, text=True)

    return _run
