"""Fakes for the layers below the agent core: a rule backend and a ZDS peer that record calls."""

from __future__ import annotations

from dataclasses import dataclass, field

from inmesh.errors import InmeshError, KernelError
from inmesh.redirect import RedirectSpec
from inmesh.zds.messages import WorkloadInfo


@dataclass
class FakeBackend:
    name: str = "fake"
    applied: list[tuple[str, RedirectSpec]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    fail_apply: bool = False

    def apply(self, netns_path: str, spec: RedirectSpec) -> bool:
        if self.fail_apply:
            raise KernelError(f"nft failed in {netns_path}")
        self.applied.append((netns_path, spec))
        self.drift = []
        return True

    def verify(self, netns_path: str, spec: RedirectSpec) -> list[str]:
        return list(self.drift)

    def remove(self, netns_path: str) -> None:
        self.removed.append(netns_path)

    def installed(self, netns_path: str) -> bool:
        return bool(self.applied)


@dataclass
class FakeZds:
    connection_count: int = 1
    adds: list[tuple[str, WorkloadInfo]] = field(default_factory=list)
    dels: list[str] = field(default_factory=list)
    fail_with: InmeshError | None = None

    async def add_workload(self, uid: str, info: WorkloadInfo, netns_fd: int) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.adds.append((uid, info))

    async def del_workload(self, uid: str) -> None:
        self.dels.append(uid)
