"""Helpers for system tests: isolated namespaces joined by veth pairs, always cleaned up."""

from __future__ import annotations

import secrets
import subprocess


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


class NetnsFactory:
    """Creates named network namespaces (``/run/netns/<name>``) and removes them on cleanup."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.created: list[str] = []

    def create(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    @staticmethod
    def path(name: str) -> str:
        return f"/run/netns/{name}"

    def exec(self, name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", f"--net=/run/netns/{name}", "--", *argv, check=check)

    def link(self, a: str, a_ip: str, b: str, b_ip: str, prefix_len: int = 24) -> None:
        """Join two namespaces with a veth pair and address both ends."""
        tag = secrets.token_hex(3)
        va, vb = f"imv{tag}a", f"imv{tag}b"
        sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        sh("ip", "-n", a, "addr", "add", f"{a_ip}/{prefix_len}", "dev", va)
        sh("ip", "-n", b, "addr", "add", f"{b_ip}/{prefix_len}", "dev", vb)
        sh("ip", "-n", a, "link", "set", va, "up")
        sh("ip", "-n", b, "link", "set", vb, "up")

    def cleanup(self) -> None:
        for name in reversed(self.created):
            sh("ip", "netns", "del", name, check=False)
        self.created.clear()
