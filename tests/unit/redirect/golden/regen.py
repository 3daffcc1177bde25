"""Regenerate the golden files: ``python -m tests.unit.redirect.golden.regen [--kernel]``.

Without flags: the restore texts and nft scripts our pure builders produce (review the diff!).
With ``--kernel`` (root): also apply each spec in a scratch netns and capture what this machine's
iptables-save / ip6tables-save / ``nft -j list ruleset inet`` print, for the parser tests.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

from inmesh.redirect import IptablesBackend, NftablesBackend, iptables, nftables
from inmesh.redirect.model import RedirectSpec

HERE = Path(__file__).parent
SPECS = {
    "ipv4": RedirectSpec(),
    "dual_stack": RedirectSpec(ipv6=True),
    "ingress": RedirectSpec(inbound_capture=False),
    "dns": RedirectSpec(dns_capture=True),
    "virtual_interfaces": RedirectSpec(virtual_interfaces=("virt0", "virt1")),
    "all_options": RedirectSpec(ipv6=True, inbound_capture=False, dns_capture=True,
                                virtual_interfaces=("virt0",)),
}


def write_builders() -> None:
    for name, spec in SPECS.items():
        for family in spec.families():
            plan = iptables.plan_restore(iptables.desired_tables(spec, family), {})
            (HERE / f"{name}.v{family}.restore").write_text(plan)
        (HERE / f"{name}.nft").write_text(nftables.plan_script(nftables.desired_tables(spec), {}))


def capture_kernel() -> None:
    ns = f"imt-golden-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    path = f"/run/netns/{ns}"
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for name, spec in SPECS.items():
            for backend in (IptablesBackend(), NftablesBackend()):
                backend.apply(path, spec)
            for tool in ("iptables-save", "ip6tables-save"):
                out = _in(path, tool)
                (HERE / "kernel" / f"{name}.{tool}").write_text(_strip_comments(out))
            (HERE / "kernel" / f"{name}.nft.json").write_text(
                _in(path, "nft", "-j", "list", "ruleset", "inet"))
            for backend in (IptablesBackend(), NftablesBackend()):
                backend.remove(path)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _in(path: str, *argv: str) -> str:
    done = subprocess.run(["nsenter", f"--net={path}", "--", *argv], check=True,
                          capture_output=True, text=True)
    return done.stdout


def _strip_comments(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


if __name__ == "__main__":
    write_builders()
    if "--kernel" in sys.argv:
        (HERE / "kernel").mkdir(exist_ok=True)
        capture_kernel()
