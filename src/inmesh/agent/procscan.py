"""Finding the network namespace of a running pod when the source does not say (or lies).

Candidates come from the runtime's named namespaces (``/run/netns``) and from every process's
``/proc/<pid>/ns/net``. A candidate is accepted only if it holds one of the pod's IPs (the
ownership check that stops a foreign process's netns from being mistaken for the pod's, Istio
PR#61211). Among several owners, the one seen first in the runtime dir wins, then the oldest
process.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute

from inmesh import netns
from inmesh.errors import InmeshError, NotFoundError

log = logging.getLogger(__name__)

RUNTIME_NETNS_DIRS = ("/run/netns", "/var/run/netns")


@dataclass(frozen=True)
class Candidate:
    path: str
    ident: netns.NetnsId
    start_time: int
    """Process start time in clock ticks; 0 for a named namespace (preferred)."""


def _proc_start_time(pid: str) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        stat = f.read()
    return int(stat.rsplit(")", 1)[1].split()[19])


def iter_candidates(
    netns_dirs: Iterable[str] = RUNTIME_NETNS_DIRS, proc: str = "/proc"
) -> Iterator[Candidate]:
    """Every distinct network namespace on the machine, except the caller's own."""
    seen = {netns.current_netns_id(), netns.netns_id_of_path("/proc/self/ns/net")}
    for directory in netns_dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                ident = netns.netns_id_of_path(path)
            except InmeshError:
                continue
            if ident not in seen:
                seen.add(ident)
                yield Candidate(path, ident, 0)
    pids = sorted((p for p in os.listdir(proc) if p.isdigit()), key=int)
    for pid in pids:
        path = f"{proc}/{pid}/ns/net"
        try:
            ident = netns.netns_id_of_path(path)
            if ident in seen:
                continue
            start = _proc_start_time(pid)
        except (InmeshError, OSError, ValueError, IndexError):
            continue
        seen.add(ident)
        yield Candidate(path, ident, start)


def _addresses_in(path: str) -> set[str]:
    def read() -> set[str]:
        with IPRoute() as ipr:
            return {
                str(ipaddress.ip_address(a.get_attr("IFA_ADDRESS")))
                for a in ipr.get_addr()
                if a.get_attr("IFA_ADDRESS")
            }

    return netns.run_in_netns(path, read)


def _canonical(ip: str) -> str:
    addr = ipaddress.ip_address(ip.split("/")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def owns_ips(path: str, ips: Iterable[str]) -> bool:
    """Ownership check: does the namespace at ``path`` hold one of ``ips``?"""
    wanted = {_canonical(ip) for ip in ips}
    try:
        return bool(wanted & _addresses_in(path))
    except InmeshError as exc:
        log.debug("cannot inspect %s: %s", path, exc)
        return False


def find_pod_netns(ips: Iterable[str], candidates: Iterable[Candidate] | None = None) -> Candidate:
    """The namespace that owns the pod's IPs; raises NotFoundError if none (or the pod has none)."""
    ips = tuple(ips)
    if not ips:
        raise NotFoundError("pod has no IP yet: its netns cannot be verified")
    owners = [c for c in (candidates or iter_candidates()) if owns_ips(c.path, ips)]
    if not owners:
        raise NotFoundError(f"no network namespace holds {', '.join(ips)}")
    return min(owners, key=lambda c: c.start_time)
