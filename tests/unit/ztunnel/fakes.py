"""Fakes for the ztunnel unit tests: a scriptable proxy factory, netns-like fds, and a
certificate source backed by a real CA."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Coroutine, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from inmesh.controlplane.ca import CertificateAuthority
from inmesh.errors import KernelError
from inmesh.identity import SpiffeId
from inmesh.pki import CertBundle, generate_key, make_csr, private_key_pem
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.errors import CertUnavailable

T = TypeVar("T")

INFO = WorkloadInfo("web-0", "shop", "web")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


async def wait_for(predicate: Any, within: float = 5.0) -> None:
    """Poll ``predicate`` until it is true, failing after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@dataclass
class FakeProxy:
    uid: str
    info: WorkloadInfo
    fd: int
    factory: FakeFactory
    started: bool = False
    drains: list[float | None] = field(default_factory=list)

    async def start(self) -> None:
        self.factory.attempts += 1
        if self.factory.failures > 0:
            self.factory.failures -= 1
            raise KernelError(f"pod {self.info.namespace}/{self.info.name}: port 15001 in use")
        os.fstat(self.fd)  # the fd must still be open while the proxy starts
        self.started = True

    async def drain(self, deadline: float | None) -> None:
        self.drains.append(deadline)


@dataclass
class FakeFactory:
    failures: int = 0
    """How many of the next start attempts fail."""
    attempts: int = 0
    made: list[FakeProxy] = field(default_factory=list)

    def __call__(self, uid: str, info: WorkloadInfo, fd: int) -> FakeProxy:
        proxy = FakeProxy(uid, info, fd, self)
        self.made.append(proxy)
        return proxy

    def live(self) -> list[FakeProxy]:
        return [p for p in self.made if p.started and not p.drains]


class FdSource:
    """Hands out fds whose (dev, ino) identity is controlled: same name → same identity. The
    manager owns (and closes) every fd handed to it, so this never closes them itself."""

    def __init__(self, directory: str) -> None:
        self._dir = directory

    def fd(self, name: str) -> int:
        path = os.path.join(self._dir, name)
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@contextmanager
def fd_source() -> Iterator[FdSource]:
    with tempfile.TemporaryDirectory(prefix="imt-zt-") as d:
        yield FdSource(d)


class FakeCerts:
    """A `CertSource` signing real certificates with a real CA, without a network or workers.
    Identities in ``refuse`` get `CertUnavailable`; ``wanted`` records `set_wanted`."""

    def __init__(self, state_dir: Path, trust_domain: str = "cluster.local") -> None:
        self.ca = CertificateAuthority.load_or_create(state_dir, trust_domain)
        self.bundles: dict[SpiffeId, CertBundle] = {}
        self.refuse: set[SpiffeId] = set()
        self.wanted: list[set[SpiffeId]] = []

    async def get(self, identity: SpiffeId) -> CertBundle:
        if identity in self.refuse:
            raise CertUnavailable(f"no certificate for {identity}: refused by the test")
        if identity not in self.bundles:
            self.renew(identity)
        return self.bundles[identity]

    def renew(self, identity: SpiffeId) -> CertBundle:
        key = generate_key()
        chain = self.ca.sign(make_csr(key, identity), identity, 3600)
        bundle = CertBundle.from_response(identity, private_key_pem(key), chain,
                                          datetime.now(UTC))
        self.bundles[identity] = bundle
        return bundle

    def set_wanted(self, identities: Set[SpiffeId]) -> None:
        self.wanted.append(set(identities))

    def dump(self) -> list[dict[str, Any]]:
        return [{"identity": i.uri, "state": "available",
                 "not_after": b.not_after.isoformat()} for i, b in sorted(self.bundles.items())]
