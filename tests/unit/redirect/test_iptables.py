"""The iptables rule set: golden restore texts, canonical form, drift, and convergent plans."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inmesh.redirect import iptables
from inmesh.redirect.iptsave import ours, parse_save
from inmesh.redirect.model import RedirectSpec
from tests.unit.redirect.fakes import FakeXtables
from tests.unit.redirect.golden.regen import SPECS

GOLDEN = Path(__file__).parent / "golden"
KERNEL = GOLDEN / "kernel"


def _kernel(name: str, family: int = 4) -> str:
    tool = "iptables-save" if family == 4 else "ip6tables-save"
    return (KERNEL / f"{name}.{tool}").read_text()


@pytest.mark.parametrize(
    ("name", "family"),
    [(n, f) for n, spec in SPECS.items() for f in spec.families()],
)
def test_fresh_restore_text_matches_golden(name: str, family: int) -> None:
    plan = iptables.plan_restore(iptables.desired_tables(SPECS[name], family), {})
    assert plan == (GOLDEN / f"{name}.v{family}.restore").read_text()


@pytest.mark.parametrize(
    ("name", "family"),
    [(n, f) for n, spec in SPECS.items() for f in spec.families()],
)
def test_rules_are_written_exactly_as_iptables_save_prints_them(name: str, family: int) -> None:
    """Captured from this machine's iptables-save after applying: no drift, empty plan."""
    desired = iptables.desired_tables(SPECS[name], family)
    current = ours(parse_save(_kernel(name, family)))
    assert iptables.drift(desired, current, "v") == []
    assert iptables.plan_restore(desired, current) == ""


def test_istio_rule_shapes_for_ipv4() -> None:
    nat = iptables.desired_tables(RedirectSpec(), 4)["nat"].lines
    assert "-A ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT" in nat
    assert ("-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark "
            "0x539/0xfff -j REDIRECT --to-ports 15006") in nat
    assert nat[-1] == ("-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff "
                       "-j REDIRECT --to-ports 15001")


def test_ingress_mode_drops_only_the_inbound_prerouting_rules() -> None:
    full = iptables.desired_tables(RedirectSpec(), 4)
    ingress = iptables.desired_tables(RedirectSpec(inbound_capture=False), 4)
    removed = set(full["nat"].lines) - set(ingress["nat"].lines)
    assert {line.split()[1] for line in removed} == {"ISTIO_PRERT"}
    assert len(removed) == 2
    assert ingress["mangle"] == full["mangle"]
    assert "-A PREROUTING -j ISTIO_PRERT" in ingress["nat"].lines


def test_disabled_family_wants_nothing() -> None:
    assert iptables.desired_tables(RedirectSpec(), 6) == {}
    assert iptables.desired_tables(RedirectSpec(ipv4=False, ipv6=True), 4) == {}


def test_dns_adds_raw_table_and_nat_dns_redirects() -> None:
    tables = iptables.desired_tables(RedirectSpec(dns_capture=True), 4)
    assert set(tables) == {"mangle", "nat", "raw"}
    assert sum("--to-ports 15053" in line for line in tables["nat"].lines) == 2


def _drifted(mutate: str) -> FakeXtables:
    xt = FakeXtables()
    xt.load(_kernel("dns"))
    if mutate == "delete-rule":
        xt.tables["nat"]["ISTIO_OUTPUT"].pop(2)
    elif mutate == "duplicate-jump":
        xt.add("nat", "-A OUTPUT -j ISTIO_OUTPUT")
    elif mutate == "flush-chain":
        xt.tables["nat"]["ISTIO_PRERT"].clear()
    elif mutate == "jump-with-match":
        xt.tables["mangle"]["OUTPUT"] = ["-p tcp -j ISTIO_OUTPUT"]
    return xt


@pytest.mark.parametrize("mutate", ["delete-rule", "duplicate-jump", "flush-chain",
                                    "jump-with-match"])
def test_drift_is_reported_and_one_restore_converges(mutate: str) -> None:
    spec = RedirectSpec(dns_capture=True)
    desired = iptables.desired_tables(spec, 4)
    xt = _drifted(mutate)
    xt.add("nat", "-A OUTPUT -p udp -m udp --dport 9 -j ACCEPT")  # foreign, must survive
    current = ours(parse_save(xt.save()))
    assert iptables.drift(desired, current, "v4") != []
    plan = iptables.plan_restore(desired, current)
    assert plan.count("COMMIT") == 1  # only the drifted table is rewritten
    xt.restore(plan)
    after = ours(parse_save(xt.save()))
    assert iptables.drift(desired, after, "v4") == []
    assert "-p udp -m udp --dport 9 -j ACCEPT" in xt.tables["nat"]["OUTPUT"]


def test_duplicate_jumps_are_deleted_by_exact_spec_then_appended_once() -> None:
    xt = _drifted("duplicate-jump")
    plan = iptables.plan_restore(iptables.desired_tables(RedirectSpec(dns_capture=True), 4),
                                 ours(parse_save(xt.save())))
    assert plan.splitlines() == [
        "*nat", ":ISTIO_PRERT - [0:0]", ":ISTIO_OUTPUT - [0:0]",
        "-D OUTPUT -j ISTIO_OUTPUT", "-D OUTPUT -j ISTIO_OUTPUT", "-A OUTPUT -j ISTIO_OUTPUT",
        *[line for line in iptables.desired_tables(RedirectSpec(dns_capture=True), 4)["nat"].lines
          if line.split()[1].startswith("ISTIO")],
        "COMMIT",
    ]


def test_turning_dns_off_tears_down_the_raw_table() -> None:
    current = ours(parse_save(_kernel("dns")))
    plan = iptables.plan_restore(iptables.desired_tables(RedirectSpec(), 4), current)
    sections = {s.splitlines()[0]: s.splitlines() for s in plan.split("COMMIT\n") if s}
    assert set(sections) == {"*nat", "*raw"}  # nat loses its DNS rules, mangle is untouched
    assert "--dport 53" not in "\n".join(sections["*nat"])
    assert [*sections["*raw"], "COMMIT"] == [
        "*raw", "-D PREROUTING -j ISTIO_PRERT", "-D OUTPUT -j ISTIO_OUTPUT",
        ":ISTIO_OUTPUT - [0:0]", ":ISTIO_PRERT - [0:0]", "-X ISTIO_OUTPUT", "-X ISTIO_PRERT",
        "COMMIT",
    ]


def test_removal_plan_removes_everything_of_ours_and_nothing_else() -> None:
    xt = FakeXtables()
    xt.load(_kernel("all_options"))
    xt.add("mangle", "-A OUTPUT -m mark --mark 0x5 -j ACCEPT")
    xt.restore(iptables.removal_plan(ours(parse_save(xt.save()))))
    assert ours(parse_save(xt.save())) == {}
    assert xt.tables["mangle"]["OUTPUT"] == ["-m mark --mark 0x5 -j ACCEPT"]
    assert iptables.removal_plan({}) == ""


def test_drift_lines_name_family_table_and_rule() -> None:
    xt = _drifted("delete-rule")
    lines = iptables.drift(iptables.desired_tables(RedirectSpec(dns_capture=True), 4),
                           ours(parse_save(xt.save())), "iptables")
    assert lines == ["iptables nat: missing rule '-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m tcp "
                     "--dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053'"]


def test_reordered_rules_are_drift() -> None:
    xt = FakeXtables()
    xt.load(_kernel("ipv4"))
    xt.tables["nat"]["ISTIO_OUTPUT"].reverse()
    lines = iptables.drift(iptables.desired_tables(RedirectSpec(), 4),
                           ours(parse_save(xt.save())), "v4")
    assert lines == ["v4 nat: rules of ISTIO_OUTPUT are out of order"]


_MUTATIONS = st.lists(st.tuples(st.sampled_from(["drop", "dup", "foreign", "flush", "jumpmatch"]),
                                st.integers(0, 50)), max_size=6)


@settings(max_examples=150, deadline=None)
@given(start=st.sampled_from(sorted(SPECS)), target=st.sampled_from(sorted(SPECS)),
       mutations=_MUTATIONS)
def test_any_drifted_state_converges_in_one_restore(
    start: str, target: str, mutations: list[tuple[str, int]]
) -> None:
    """From any spec's rules, mutated arbitrarily, one plan reaches any other spec exactly."""
    xt = FakeXtables()
    xt.load(_kernel(start))
    foreign: list[tuple[str, str]] = []
    for kind, n in mutations:
        _mutate(xt, kind, n, foreign)
    desired = iptables.desired_tables(SPECS[target], 4)
    xt.restore(iptables.plan_restore(desired, ours(parse_save(xt.save()))))
    after = ours(parse_save(xt.save()))
    assert iptables.drift(desired, after, "v4") == []
    assert iptables.plan_restore(desired, after) == ""
    for table, line in foreign:
        assert line[3:].split(" ", 1)[1] in xt.tables[table]["OUTPUT"]


def _mutate(xt: FakeXtables, kind: str, n: int, foreign: list[tuple[str, str]]) -> None:
    tables = sorted(xt.tables)
    table = xt.tables[tables[n % len(tables)]]
    chains = sorted(table)
    chain = chains[n % len(chains)]
    ours_here = [i for i, spec in enumerate(table[chain])
                 if chain.startswith("ISTIO") or "ISTIO_" in spec]
    if kind == "drop" and ours_here:  # foreign rules are never ours to lose
        table[chain].pop(ours_here[n % len(ours_here)])
    elif kind == "dup" and "ISTIO_OUTPUT" in table:
        table["OUTPUT"].append("-j ISTIO_OUTPUT")
    elif kind == "foreign":
        line = f"-A OUTPUT -p tcp -m tcp --dport {n + 1} -j ACCEPT"
        table["OUTPUT"].append(line[10:])
        foreign.append((tables[n % len(tables)], line))
    elif kind == "flush" and chain.startswith("ISTIO"):
        table[chain].clear()
    elif kind == "jumpmatch" and "ISTIO_PRERT" in table:
        table["PREROUTING"].insert(0, "-i lo -j ISTIO_PRERT")
