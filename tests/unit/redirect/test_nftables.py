"""The nftables rule set: golden scripts, minimal reconcile transactions, drift, delete."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from inmesh.redirect import nftables
from inmesh.redirect.model import RedirectSpec
from inmesh.redirect.nftables import NftChain, NftRule, NftTable
from inmesh.redirect.nftjson import parse_ruleset
from inmesh.redirect.nftterms import statement
from tests.unit.redirect.golden.regen import SPECS

GOLDEN = Path(__file__).parent / "golden"


def _kernel(name: str) -> dict[str, NftTable]:
    return parse_ruleset((GOLDEN / "kernel" / f"{name}.nft.json").read_text())


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fresh_script_matches_golden(name: str) -> None:
    script = nftables.plan_script(nftables.desired_tables(SPECS[name]), {})
    assert script == (GOLDEN / f"{name}.nft").read_text()


@pytest.mark.parametrize("name", sorted(SPECS))
def test_kernel_state_after_apply_matches_structurally(name: str) -> None:
    desired = nftables.desired_tables(SPECS[name])
    assert nftables.drift(desired, _kernel(name)) == []
    assert nftables.plan_script(desired, _kernel(name)) == ""


def test_fresh_script_adds_flushes_then_fills_each_table() -> None:
    lines = nftables.plan_script(nftables.desired_tables(RedirectSpec()), {}).splitlines()
    assert lines[:3] == [
        "add table inet istio-ambient-nat",
        "flush table inet istio-ambient-nat",
        "add chain inet istio-ambient-nat prerouting { type nat hook prerouting priority -100 ; }",
    ]
    assert "add chain inet istio-ambient-mangle output { type route hook output priority -150 ; }" \
        in lines
    assert not any("istio-ambient-raw" in line for line in lines)


def test_family_specific_rules_follow_the_spec() -> None:
    v4 = nftables.plan_script(nftables.desired_tables(RedirectSpec()), {})
    v6 = nftables.plan_script(nftables.desired_tables(RedirectSpec(ipv4=False, ipv6=True)), {})
    assert "ip6 " not in v4
    assert "ip daddr != 127.0.0.1/32" in v4
    assert "ip " not in v6.replace("ip6 ", "")
    assert "ip6 daddr != ::1/128" in v6


def test_ingress_mode_keeps_outbound_and_connmark() -> None:
    tables = nftables.desired_tables(RedirectSpec(inbound_capture=False))
    nat_prert = [r for r in tables["istio-ambient-nat"].rules if r.chain == "istio-prerouting"]
    assert nat_prert == []
    assert any(r.chain == "istio-prerouting" for r in tables["istio-ambient-mangle"].rules)


def test_only_the_drifted_table_is_rewritten() -> None:
    current = _kernel("dns")
    nat = current["istio-ambient-nat"]
    current["istio-ambient-nat"] = replace(nat, rules=nat.rules[:-1])
    script = nftables.plan_script(nftables.desired_tables(SPECS["dns"]), current)
    assert script.startswith("add table inet istio-ambient-nat\nflush table inet istio-ambient-nat\n")
    assert "istio-ambient-mangle" not in script
    assert "istio-ambient-raw" not in script


def test_stale_or_redeclared_chains_are_deleted_in_the_same_transaction() -> None:
    current = _kernel("ipv4")
    mangle = current["istio-ambient-mangle"]
    chains = tuple(replace(c, prio=10) if c.name == "output" else c for c in mangle.chains)
    current["istio-ambient-mangle"] = replace(
        mangle, chains=(*chains, NftChain("extra")),
        rules=(*mangle.rules, NftRule("extra", (statement("accept"),))))
    desired = nftables.desired_tables(SPECS["ipv4"])
    drift = nftables.drift(desired, current)
    assert drift == [
        "nft table inet istio-ambient-mangle: chain extra: expected nothing, found a regular chain",
        "nft table inet istio-ambient-mangle: chain output: expected {type route hook output "
        "priority -150 policy accept}, found {type route hook output priority 10 policy accept}",
        "nft table inet istio-ambient-mangle: chain extra: rules differ: expected [], "
        "found [accept]",
    ]
    lines = nftables.plan_script(desired, current).splitlines()
    assert lines[:4] == [
        "add table inet istio-ambient-mangle", "flush table inet istio-ambient-mangle",
        "delete chain inet istio-ambient-mangle output",
        "delete chain inet istio-ambient-mangle extra",
    ]


def test_foreign_objects_in_our_table_recreate_it() -> None:
    current = _kernel("ipv4")
    current["istio-ambient-nat"] = replace(current["istio-ambient-nat"], extras=("set x",))
    desired = nftables.desired_tables(SPECS["ipv4"])
    assert nftables.drift(desired, current) == [
        "nft table inet istio-ambient-nat: unexpected set x"]
    assert nftables.plan_script(desired, current).splitlines()[:3] == [
        "add table inet istio-ambient-nat", "delete table inet istio-ambient-nat",
        "add table inet istio-ambient-nat"]


def test_unwanted_table_is_deleted_safely() -> None:
    script = nftables.plan_script(nftables.desired_tables(SPECS["ipv4"]), _kernel("dns"))
    assert "add table inet istio-ambient-raw\ndelete table inet istio-ambient-raw\n" in script
    drift = nftables.drift(nftables.desired_tables(SPECS["ipv4"]), _kernel("dns"))
    assert "nft table inet istio-ambient-raw: present but not wanted" in drift


def test_missing_tables_are_drift() -> None:
    assert nftables.drift(nftables.desired_tables(SPECS["ipv4"]), {}) == [
        "nft table inet istio-ambient-nat: missing",
        "nft table inet istio-ambient-mangle: missing",
    ]


def test_delete_script_adds_then_deletes_every_table() -> None:
    assert nftables.delete_script().splitlines() == [
        line for name in ("nat", "mangle", "raw")
        for line in (f"add table inet istio-ambient-{name}",
                     f"delete table inet istio-ambient-{name}")]
