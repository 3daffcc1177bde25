"""Both rule backends against the real kernel, in fresh namespaces: reconcile, drift, removal.

Every test builds its own namespaces with `netns_factory` (deleted afterwards, also on failure)
and only ever touches those.
"""

from __future__ import annotations

import json
import os

import pytest

from inmesh.errors import KernelError
from inmesh.netns import open_netns
from inmesh.redirect import RedirectSpec, RuleBackend, select_backend
from tests.system.nshelpers import NetnsFactory

SPEC = RedirectSpec(dns_capture=True, virtual_interfaces=("virt0",))


@pytest.fixture(params=["iptables", "nftables"])
def backend(request: pytest.FixtureRequest) -> RuleBackend:
    return select_backend(request.param)


@pytest.fixture
def pod(netns_factory: NetnsFactory) -> str:
    name = netns_factory.create("pod")
    netns_factory.exec(name, "ip", "addr", "add", "10.77.0.1/24", "dev", "lo")
    return name


def _out(ns: NetnsFactory, name: str, *argv: str) -> str:
    return ns.exec(name, *argv).stdout


def _our_residue(ns: NetnsFactory, name: str) -> list[str]:
    """Everything of ours the tools print, whichever backend wrote it."""
    found = []
    for tool in ("iptables-save", "ip6tables-save"):
        found += [line for line in _out(ns, name, tool).splitlines() if "ISTIO_" in line]
    found += [line for line in _out(ns, name, "nft", "list", "ruleset").splitlines()
              if "istio-ambient" in line]
    for family in ("-4", "-6"):
        found += [line for line in _out(ns, name, "ip", family, "rule", "show").splitlines()
                  if "0x111/0xfff" in line]
        found += [line for line in _out(ns, name, "ip", family, "route", "show", "table", "100")
                  .splitlines() if line.startswith("local default")]
    return found


def test_apply_is_idempotent_and_verifies(netns_factory: NetnsFactory, pod: str,
                                          backend: RuleBackend) -> None:
    path = netns_factory.path(pod)
    assert not backend.installed(path)
    assert backend.verify(path, SPEC) != []
    assert backend.apply(path, SPEC) is True
    assert backend.apply(path, SPEC) is False
    assert backend.verify(path, SPEC) == []
    assert backend.installed(path)
    assert "fwmark 0x111/0xfff lookup 100" in _out(netns_factory, pod, "ip", "rule", "show")
    assert _out(netns_factory, pod, "ip", "route", "show", "table", "100").startswith(
        "local default dev lo")


def _nft_first_rule_handle(ns: NetnsFactory, pod: str, table: str, chain: str) -> str:
    doc = json.loads(_out(ns, pod, "nft", "-j", "list", "chain", "inet", table, chain))
    return str(next(item["rule"]["handle"] for item in doc["nftables"] if "rule" in item))


def _mutate(ns: NetnsFactory, pod: str, kind: str, mutation: str) -> None:
    nat = "istio-ambient-nat"
    if kind == "iptables":
        commands = {
            "delete-rule": ["iptables", "-t", "nat", "-D", "ISTIO_OUTPUT", "-p", "tcp", "-m",
                            "mark", "--mark", "0x111/0xfff", "-j", "ACCEPT"],
            "duplicate-jump": ["iptables", "-t", "nat", "-A", "OUTPUT", "-j", "ISTIO_OUTPUT"],
            "flush-chain": ["iptables", "-t", "nat", "-F", "ISTIO_PRERT"],
            "change-chain": ["iptables", "-t", "mangle", "-I", "ISTIO_OUTPUT", "-j", "RETURN"],
        }
    else:
        handle = _nft_first_rule_handle(ns, pod, nat, "istio-output")
        commands = {
            "delete-rule": ["nft", "delete", "rule", "inet", nat, "istio-output", "handle", handle],
            "duplicate-jump": ["nft", "add", "rule", "inet", nat, "output", "jump", "istio-output"],
            "flush-chain": ["nft", "flush", "chain", "inet", nat, "istio-prerouting"],
            "change-chain": ["nft", "add chain inet istio-ambient-mangle extra "
                             "{ type filter hook input priority 0 ; policy drop ; }"],
        }
    ns.exec(pod, *commands[mutation])


@pytest.mark.parametrize("mutation", ["delete-rule", "duplicate-jump", "flush-chain",
                                      "change-chain"])
def test_drift_is_reported_and_repaired(netns_factory: NetnsFactory, pod: str,
                                        backend: RuleBackend, mutation: str) -> None:
    path = netns_factory.path(pod)
    backend.apply(path, SPEC)
    _mutate(netns_factory, pod, backend.name, mutation)
    assert backend.verify(path, SPEC) != []
    assert backend.apply(path, SPEC) is True
    assert backend.verify(path, SPEC) == []


def test_deleted_ip_rule_and_route_are_drift_and_restored(netns_factory: NetnsFactory, pod: str,
                                                          backend: RuleBackend) -> None:
    path = netns_factory.path(pod)
    backend.apply(path, SPEC)
    netns_factory.exec(pod, "ip", "rule", "del", "fwmark", "0x111/0xfff", "lookup", "100")
    netns_factory.exec(pod, "ip", "route", "del", "local", "default", "dev", "lo", "table", "100")
    assert len(backend.verify(path, SPEC)) == 2
    assert backend.apply(path, SPEC) is True
    assert backend.verify(path, SPEC) == []


def _add_foreign(ns: NetnsFactory, pod: str) -> None:
    ns.exec(pod, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9999",
            "-j", "ACCEPT")
    ns.exec(pod, "iptables", "-t", "mangle", "-N", "FOREIGN")
    ns.exec(pod, "nft", "add table inet foreign; add chain inet foreign c; "
                        "add rule inet foreign c counter accept")
    ns.exec(pod, "ip", "rule", "add", "fwmark", "0x5", "lookup", "200", "pref", "1000")
    ns.exec(pod, "ip", "route", "add", "10.9.9.0/24", "dev", "lo", "table", "100")


def test_remove_leaves_no_residue_and_keeps_foreign_state(netns_factory: NetnsFactory, pod: str,
                                                          backend: RuleBackend) -> None:
    path = netns_factory.path(pod)
    backend.apply(path, RedirectSpec(ipv6=True, dns_capture=True))
    _add_foreign(netns_factory, pod)
    backend.remove(path)
    assert _our_residue(netns_factory, pod) == []
    assert not backend.installed(path)
    backend.remove(path)  # idempotent
    assert "--dport 9999 -j ACCEPT" in _out(netns_factory, pod, "iptables-save", "-t", "nat")
    assert ":FOREIGN" in _out(netns_factory, pod, "iptables-save", "-t", "mangle")
    assert "counter" in _out(netns_factory, pod, "nft", "list", "table", "inet", "foreign")
    assert "fwmark 0x5 lookup 200" in _out(netns_factory, pod, "ip", "rule", "show")
    assert "10.9.9.0/24 dev lo" in _out(netns_factory, pod, "ip", "route", "show", "table", "100")


def test_ipv6_rules_and_routes_when_the_pod_has_ipv6(netns_factory: NetnsFactory, pod: str,
                                                     backend: RuleBackend) -> None:
    path = netns_factory.path(pod)
    netns_factory.exec(pod, "ip", "-6", "addr", "add", "fd00:77::1/128", "dev", "lo", "nodad")
    dual = RedirectSpec(ipv6=True, dns_capture=True)
    assert backend.apply(path, dual) is True
    assert backend.verify(path, dual) == []
    assert "fwmark 0x111/0xfff lookup 100" in _out(netns_factory, pod, "ip", "-6", "rule")
    assert _out(netns_factory, pod, "ip", "-6", "route", "show", "table", "100").startswith(
        "local default dev lo")
    if backend.name == "iptables":
        assert "! -d ::1/128 -p tcp -m mark" in _out(netns_factory, pod, "ip6tables-save")
    else:
        assert "ip6 daddr != ::1" in _out(netns_factory, pod, "nft", "list", "ruleset")
    # the pod loses IPv6 and DNS capture: one apply converges to the smaller rule set
    assert backend.apply(path, RedirectSpec()) is True
    assert backend.verify(path, RedirectSpec()) == []
    assert "0x111" not in _out(netns_factory, pod, "ip", "-6", "rule")


def test_switching_backends_leaves_only_the_new_one(netns_factory: NetnsFactory, pod: str) -> None:
    path = netns_factory.path(pod)
    old, new = select_backend("iptables"), select_backend("nftables")
    old.apply(path, SPEC)
    old.remove(path)
    new.apply(path, SPEC)
    assert new.verify(path, SPEC) == []
    assert "ISTIO_" not in _out(netns_factory, pod, "iptables-save")


def test_works_through_a_proc_fd_path(netns_factory: NetnsFactory, pod: str,
                                      backend: RuleBackend) -> None:
    """The agent passes /proc/<pid>/fd/<n> of the netns it holds open."""
    fd = open_netns(netns_factory.path(pod))
    try:
        path = f"/proc/{os.getpid()}/fd/{fd}"
        assert backend.apply(path, SPEC) is True
        assert backend.verify(path, SPEC) == []
        backend.remove(path)
        assert not backend.installed(path)
    finally:
        os.close(fd)


def test_a_missing_netns_is_a_kernel_error_naming_it(backend: RuleBackend) -> None:
    with pytest.raises(KernelError, match="/run/netns/imt-does-not-exist"):
        backend.apply("/run/netns/imt-does-not-exist", SPEC)


def test_the_callers_own_netns_is_refused(backend: RuleBackend) -> None:
    with pytest.raises(KernelError, match="refusing"):
        backend.verify("/proc/self/ns/net", SPEC)  # read-only even if the guard were broken
