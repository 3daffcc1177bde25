"""The I/O shells: run iptables-restore/-save or nft inside a pod netns, plus the ip rule/route.

Each backend reconciles: read what is there, apply the difference with one iptables-restore per
family (atomic per table) or one nft transaction, then verify and raise if the kernel disagrees.
Both own the same ip rule/route, so either backend's ``remove``/``installed`` covers them.
Commands run as ``nsenter --net=PATH -- ...`` (`inmesh.netns.nsenter_argv`); routes go through
`routes` (netlink on a thread inside the netns). A target that is the caller's own netns (or
pid 1's) is refused, so the root namespace is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Protocol

from inmesh.errors import ConfigError, KernelError
from inmesh.netns import netns_id_of_fd, netns_id_of_path, nsenter_argv, open_netns
from inmesh.redirect import iptables, nftables, routes
from inmesh.redirect.iptsave import OurTable, ours, parse_save
from inmesh.redirect.model import FAMILIES, RedirectSpec, RuleParseError
from inmesh.redirect.nftables import NftTable
from inmesh.redirect.nftjson import parse_ruleset

COMMAND_TIMEOUT_S = 30.0
"""Upper bound for one iptables/nft run. A healthy one takes milliseconds; a wedged one (xtables
lock, stuck netlink) must fail the pod's add with a KernelError instead of hanging the agent."""
XTABLES_LOCK_WAIT_S = 10
"""``iptables-restore -w``: how long to wait for the xtables lock (legacy backend only; the nft
flavour has no lock). Shorter than COMMAND_TIMEOUT_S so the lock error is what gets reported."""


class ToolMissingError(KernelError):
    """The command (iptables, ip6tables, nft) is not installed."""


Runner = Callable[[Sequence[str], str | None], str]
"""Runs argv with optional stdin, returns stdout; raises KernelError (ToolMissingError)."""


def run_command(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S, check=False)
    except FileNotFoundError as exc:
        raise ToolMissingError(f"{exc.filename or argv[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise KernelError(f"{' '.join(argv)} timed out after {COMMAND_TIMEOUT_S:g}s") from exc
    if done.returncode == 127:  # nsenter (or a shell) could not execute the command
        raise ToolMissingError(done.stderr.strip() or f"{argv[-1]} not found")
    if done.returncode != 0:
        raise KernelError(f"exit {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class RouteOps(Protocol):
    def read_state(self, netns_path: str) -> routes.RouteState: ...
    def apply(self, netns_path: str, spec: RedirectSpec) -> bool: ...
    def remove(self, netns_path: str) -> None: ...


class _NetlinkRoutes:
    read_state = staticmethod(routes.read_state)
    apply = staticmethod(routes.apply)
    remove = staticmethod(routes.remove)


def refuse_own_netns(netns_path: str) -> None:
    """Raise unless ``netns_path`` is a netns other than ours and pid 1's (the host's)."""
    fd = open_netns(netns_path)
    try:
        target = netns_id_of_fd(fd)
    finally:
        os.close(fd)
    for own in ("/proc/self/ns/net", "/proc/1/ns/net"):
        try:
            if netns_id_of_path(own) == target:
                raise KernelError(f"refusing to change {netns_path}: it is the netns of {own}")
        except KernelError as exc:
            if exc.errno is None:
                raise


class RuleBackend(Protocol):
    name: str

    def apply(self, netns_path: str, spec: RedirectSpec) -> bool: ...
    def verify(self, netns_path: str, spec: RedirectSpec) -> list[str]: ...
    def remove(self, netns_path: str) -> None: ...
    def installed(self, netns_path: str) -> bool: ...


class _Shell:
    """What both backends share: running commands in the netns, the guard, routes, verify."""

    name = "?"

    def __init__(self, *, runner: Runner = run_command, route_ops: RouteOps | None = None,
                 guard: Callable[[str], None] = refuse_own_netns) -> None:
        self._runner = runner
        self._routes: RouteOps = route_ops if route_ops is not None else _NetlinkRoutes()
        self._guard = guard

    def _run(self, netns_path: str, argv: Sequence[str], stdin: str | None = None) -> str:
        try:
            return self._runner([*nsenter_argv(netns_path), *argv], stdin)
        except KernelError as exc:
            raise type(exc)(f"{self.name}: {' '.join(argv)} in netns {netns_path} failed: {exc}",
                            errno_=exc.errno) from exc

    def _rule_drift(self, netns_path: str, spec: RedirectSpec) -> list[str]:
        raise NotImplementedError

    def _drift(self, netns_path: str, spec: RedirectSpec) -> list[str]:
        return (routes.route_drift(spec, self._routes.read_state(netns_path))
                + self._rule_drift(netns_path, spec))

    def verify(self, netns_path: str, spec: RedirectSpec) -> list[str]:
        self._guard(netns_path)
        return self._drift(netns_path, spec)

    def _verified(self, netns_path: str, spec: RedirectSpec, changed: bool) -> bool:
        drift = self._drift(netns_path, spec)
        if drift:
            raise KernelError(f"{self.name}: rules in netns {netns_path} still differ after "
                              f"apply: {'; '.join(drift)}")
        return changed

    def _routes_present(self, netns_path: str) -> bool:
        return any(s.rules or s.route == "ok"
                   for s in self._routes.read_state(netns_path).values())


class IptablesBackend(_Shell):
    """iptables-restore/-save per family (``flavor``: "" = the system default, "nft", "legacy")."""

    name = "iptables"

    def __init__(self, flavor: str = "", *, runner: Runner = run_command,
                 route_ops: RouteOps | None = None,
                 guard: Callable[[str], None] = refuse_own_netns) -> None:
        super().__init__(runner=runner, route_ops=route_ops, guard=guard)
        suffix = f"-{flavor}" if flavor else ""
        self._tool = {4: f"iptables{suffix}", 6: f"ip6tables{suffix}"}

    def _ours(self, netns_path: str, family: int, needed: bool) -> dict[str, OurTable] | None:
        """Our part of the family's tables; None if its tool is missing and not needed."""
        try:
            text = self._run(netns_path, [f"{self._tool[family]}-save"])
        except ToolMissingError:
            if needed:
                raise
            return None
        try:
            return ours(parse_save(text))
        except RuleParseError as exc:
            raise RuleParseError(f"{self._tool[family]}-save in netns {netns_path}: {exc}") from exc

    def _restore(self, netns_path: str, family: int, plan: str) -> None:
        argv = [f"{self._tool[family]}-restore", "--noflush", "-w", str(XTABLES_LOCK_WAIT_S)]
        self._run(netns_path, argv, plan)

    def apply(self, netns_path: str, spec: RedirectSpec) -> bool:
        self._guard(netns_path)
        changed = self._routes.apply(netns_path, spec)
        for family in FAMILIES:
            current = self._ours(netns_path, family, family in spec.families())
            plan = iptables.plan_restore(iptables.desired_tables(spec, family), current or {})
            if current is not None and plan:
                self._restore(netns_path, family, plan)
                changed = True
        return self._verified(netns_path, spec, changed)

    def _rule_drift(self, netns_path: str, spec: RedirectSpec) -> list[str]:
        lines: list[str] = []
        for family in FAMILIES:
            current = self._ours(netns_path, family, family in spec.families())
            if current is not None:
                desired = iptables.desired_tables(spec, family)
                lines += iptables.drift(desired, current, f"{self._tool[family]}")
        return lines

    def remove(self, netns_path: str) -> None:
        self._guard(netns_path)
        for family in FAMILIES:
            current = self._ours(netns_path, family, needed=False)
            if current:
                self._restore(netns_path, family, iptables.removal_plan(current))
        self._routes.remove(netns_path)
        if self._present(netns_path):
            raise KernelError(f"{self.name}: residue left in netns {netns_path} after remove")

    def installed(self, netns_path: str) -> bool:
        self._guard(netns_path)
        return self._present(netns_path)

    def _present(self, netns_path: str) -> bool:
        return (any(self._ours(netns_path, f, needed=False) for f in FAMILIES)
                or self._routes_present(netns_path))


class NftablesBackend(_Shell):
    """Native nftables: three ``inet`` tables changed in one ``nft -f -`` transaction."""

    name = "nftables"

    def _tables(self, netns_path: str) -> dict[str, NftTable]:
        text = self._run(netns_path, ["nft", "-j", "list", "ruleset", "inet"])
        try:
            return parse_ruleset(text)
        except RuleParseError as exc:
            raise RuleParseError(f"nft -j list in netns {netns_path}: {exc}") from exc

    def _transact(self, netns_path: str, script: str) -> None:
        self._run(netns_path, ["nft", "-f", "-"], script)

    def apply(self, netns_path: str, spec: RedirectSpec) -> bool:
        self._guard(netns_path)
        changed = self._routes.apply(netns_path, spec)
        script = nftables.plan_script(nftables.desired_tables(spec), self._tables(netns_path))
        if script:
            self._transact(netns_path, script)
            changed = True
        return self._verified(netns_path, spec, changed)

    def _rule_drift(self, netns_path: str, spec: RedirectSpec) -> list[str]:
        return nftables.drift(nftables.desired_tables(spec), self._tables(netns_path))

    def remove(self, netns_path: str) -> None:
        self._guard(netns_path)
        if self._tables(netns_path):
            self._transact(netns_path, nftables.delete_script())
        self._routes.remove(netns_path)
        if self._present(netns_path):
            raise KernelError(f"{self.name}: residue left in netns {netns_path} after remove")

    def installed(self, netns_path: str) -> bool:
        self._guard(netns_path)
        return self._present(netns_path)

    def _present(self, netns_path: str) -> bool:
        return bool(self._tables(netns_path)) or self._routes_present(netns_path)


def nft_usable(runner: Runner = run_command) -> bool:
    """True if an ``nft`` binary runs and was built with JSON (needed to verify)."""
    if shutil.which("nft") is None:
        return False
    try:
        version = runner(["nft", "-V"], None)
    except KernelError:
        return False
    fields = {key.strip(): value.strip()
              for key, _, value in (line.partition(":") for line in version.splitlines())}
    return fields.get("json") == "yes"


def select_backend(kind: str = "auto", runner: Runner = run_command) -> RuleBackend:
    """"iptables", "nftables", or "auto" (the agent's ``backend`` setting overrides it).

    auto = nftables when an ``nft`` binary runs and was built with JSON, else iptables. Why:
    on current distributions (Debian 12 here) ``iptables`` is iptables-nft, a translation layer
    over the same nf_tables; native nft changes all three tables in one transaction (iptables
    commits per table) and is verified structurally through ``nft -j``. Istio defaults to
    iptables; a node that must stay swappable with an Istio agent using iptables should set
    ``iptables`` explicitly.
    """
    if kind == "iptables":
        return IptablesBackend(runner=runner)
    if kind == "nftables":
        return NftablesBackend(runner=runner)
    if kind != "auto":
        raise ConfigError(f"unknown rule backend {kind!r} (iptables, nftables or auto)")
    if nft_usable(runner):
        return NftablesBackend(runner=runner)
    if shutil.which("iptables-restore") is not None:
        return IptablesBackend(runner=runner)
    raise ConfigError("no rule backend: neither nft (with JSON) nor iptables-restore is installed")
