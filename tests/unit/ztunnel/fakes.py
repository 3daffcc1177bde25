"""Fakes for the ztunnel unit tests: a scriptable proxy factory and netns-like fds."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import uvloop

from inmesh.errors import KernelError
from inmesh.zds.messages import WorkloadInfo

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
