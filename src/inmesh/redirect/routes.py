"""The policy route (reference 4.1): ``ip rule fwmark 0x111/0xfff lookup 100 pref 32764`` and a
local default route in table 100, per family, read and changed from inside the pod's netns.

The netlink socket (pyroute2 IPRoute) is created on a thread that entered the namespace
(`inmesh.netns.run_in_netns`), so every call here acts on the pod, never on the caller's netns.
`RouteState` is a plain snapshot; `route_drift` compares it with a spec without any I/O.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from inmesh.constants import CONN_MARK, MARK_MASK, ROUTE_TABLE, RULE_PRIORITY
from inmesh.errors import KernelError
from inmesh.netns import run_in_netns
from inmesh.redirect.model import FAMILIES, RedirectSpec

AF = {4: socket.AF_INET, 6: socket.AF_INET6}
DEFAULT_DST = {4: "0.0.0.0/0", 6: "::/0"}
RTN_LOCAL = 2
RT_SCOPE_HOST = 254
FR_ACT_TO_TBL = 1
_GONE = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)


@dataclass(frozen=True)
class FamilyRoutes:
    """What one family has: our ip rules (count), the table-100 default route, lo's IPv6."""

    rules: int
    route: str
    """"ok", "absent", or a description of a different default route in table 100."""
    route_possible: bool = True
    """False when lo has IPv6 disabled (Istio then skips the v6 route)."""


RouteState = dict[int, FamilyRoutes]
T = TypeVar("T")


def route_drift(spec: RedirectSpec, state: RouteState) -> list[str]:
    """Differences between the spec and a snapshot ([] = exact)."""
    lines: list[str] = []
    for family, have in state.items():
        wanted = family in spec.families()
        rule = f"ip -{family} rule fwmark {CONN_MARK:#x}/{MARK_MASK:#x} lookup {ROUTE_TABLE}"
        if wanted and have.rules != 1:
            lines.append(f"{rule}: expected 1, found {have.rules}")
        if not wanted and have.rules:
            lines.append(f"{rule}: leftover ({have.rules})")
        route = f"ip -{family} route table {ROUTE_TABLE} local default dev lo"
        if wanted and have.route_possible and have.route != "ok":
            lines.append(f"{route}: {have.route}")
        if not wanted and have.route == "ok":
            lines.append(f"{route}: leftover")
    return lines


def read_state(netns_path: str) -> RouteState:
    return _in_netns(netns_path, "read ip rules/routes", _read_all)


def apply(netns_path: str, spec: RedirectSpec) -> bool:
    """Converge rules and routes to ``spec``; True if anything changed."""
    return _in_netns(netns_path, "apply ip rule/route", lambda ipr: _apply_all(ipr, spec))


def remove(netns_path: str) -> None:
    _in_netns(netns_path, "remove ip rule/route", _remove_all)


def _in_netns(netns_path: str, what: str, fn: Callable[[Any], T]) -> T:
    def run() -> T:
        with IPRoute() as ipr:
            return fn(ipr)

    try:
        return run_in_netns(netns_path, run)
    except NetlinkError as exc:
        raise KernelError(f"{what} in netns {netns_path}: {exc}", errno_=exc.code) from exc
    except OSError as exc:
        raise KernelError(f"{what} in netns {netns_path}: {exc}", errno_=exc.errno) from exc


def _read_all(ipr: IPRoute) -> RouteState:
    lo = _lo_index(ipr)
    possible = _v6_possible()
    return {f: FamilyRoutes(len(_our_rules(ipr, f)), _route_status(ipr, f, lo),
                            possible if f == 6 else True)
            for f in FAMILIES}


def _apply_all(ipr: IPRoute, spec: RedirectSpec) -> bool:
    changed = False
    lo, possible = _lo_index(ipr), _v6_possible()
    for family in FAMILIES:
        if family not in spec.families():
            changed |= _remove_family(ipr, family, lo)
            continue
        rules = _our_rules(ipr, family)
        for _duplicate in rules[1:]:
            _tolerate(_GONE, ipr.rule, "del", **_rule_args(family))
            changed = True
        if not rules:
            _tolerate((errno.EEXIST,), ipr.rule, "add", **_rule_args(family))  # Istio: same
            changed = True
        if (family == 4 or possible) and _route_status(ipr, family, lo) != "ok":
            ipr.route("replace", **_route_args(family, lo))
            changed = True
    return changed


def _remove_all(ipr: IPRoute) -> None:
    lo = _lo_index(ipr)
    for family in FAMILIES:
        _remove_family(ipr, family, lo)


def _remove_family(ipr: IPRoute, family: int, lo: int) -> bool:
    changed = False
    for _rule in _our_rules(ipr, family):
        _tolerate(_GONE, ipr.rule, "del", **_rule_args(family))
        changed = True
    if _route_status(ipr, family, lo) == "ok":
        _tolerate(_GONE, ipr.route, "del", **_route_args(family, lo))
        changed = True
    return changed


def _rule_args(family: int) -> dict[str, Any]:
    return {"family": AF[family], "fwmark": CONN_MARK, "fwmask": MARK_MASK,
            "table": ROUTE_TABLE, "priority": RULE_PRIORITY}


def _route_args(family: int, lo: int) -> dict[str, Any]:
    return {"family": AF[family], "dst": DEFAULT_DST[family], "type": "local",
            "table": ROUTE_TABLE, "oif": lo, "scope": RT_SCOPE_HOST}


def _our_rules(ipr: IPRoute, family: int) -> list[Any]:
    return [r for r in ipr.get_rules(family=AF[family]) if _is_ours(r)]


def _is_ours(rule: Any) -> bool:
    seen = (rule.get_attr("FRA_PRIORITY"), rule.get_attr("FRA_FWMARK"),
            rule.get_attr("FRA_FWMASK"), rule.get_attr("FRA_TABLE") or rule["table"],
            rule["action"])
    return bool(seen == (RULE_PRIORITY, CONN_MARK, MARK_MASK, ROUTE_TABLE, FR_ACT_TO_TBL))


def _route_status(ipr: IPRoute, family: int, lo: int) -> str:
    routes = [r for r in ipr.get_routes(family=AF[family], table=ROUTE_TABLE)
              if r["dst_len"] == 0 and (r.get_attr("RTA_TABLE") or r["table"]) == ROUTE_TABLE]
    if not routes:
        return "absent"
    route = routes[0]
    # IPv6 routes carry no scope (the kernel reports 0 whatever was asked), so only v4 checks it
    scope_ok = family == 6 or route["scope"] == RT_SCOPE_HOST
    if route["type"] == RTN_LOCAL and route.get_attr("RTA_OIF") == lo and scope_ok:
        return "ok"
    return (f"found type {route['type']} scope {route['scope']} "
            f"oif {route.get_attr('RTA_OIF')} instead")


def _lo_index(ipr: IPRoute) -> int:
    found = ipr.link_lookup(ifname="lo")
    if not found:
        raise KernelError("no lo interface")
    return int(found[0])


def _v6_possible() -> bool:
    """Istio skips the ::/0 local route when lo has IPv6 disabled (or IPv6 is absent)."""
    try:
        with open("/proc/sys/net/ipv6/conf/lo/disable_ipv6") as f:
            return f.read().strip() != "1"
    except FileNotFoundError:
        return False


def _tolerate(codes: tuple[int, ...], op: Any, *args: Any, **kwargs: Any) -> None:
    """Run a netlink change; the errnos that mean "already done" (it raced us) are success."""
    try:
        op(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in codes:
            raise
