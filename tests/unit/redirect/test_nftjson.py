"""Reading `nft -j list ruleset inet`: structure, robustness, and the one exception type."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inmesh.redirect import nftables
from inmesh.redirect.model import RuleParseError
from inmesh.redirect.nftjson import parse_ruleset
from tests.unit.redirect.golden.regen import SPECS

KERNEL = Path(__file__).parent / "golden" / "kernel"


def _doc(name: str) -> dict[str, Any]:
    return json.loads((KERNEL / f"{name}.nft.json").read_text())  # type: ignore[no-any-return]


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [item["rule"] for item in doc["nftables"] if "rule" in item]


def test_reads_chains_with_hooks_and_priorities() -> None:
    tables = parse_ruleset(json.dumps(_doc("dns")))
    assert sorted(tables) == ["istio-ambient-mangle", "istio-ambient-nat", "istio-ambient-raw"]
    output = {c.name: c for c in tables["istio-ambient-mangle"].chains}["output"]
    assert (output.type, output.hook, output.prio, output.policy) == ("route", "output", -150,
                                                                      "accept")


def test_counters_and_handles_do_not_matter() -> None:
    doc = _doc("ipv4")
    for rule in _rules(doc):
        rule["handle"] = rule["handle"] + 1000
        for expr in rule["expr"]:
            if "counter" in expr:
                expr["counter"] = {"packets": 42, "bytes": 4200}
    assert nftables.drift(nftables.desired_tables(SPECS["ipv4"]), parse_ruleset(json.dumps(doc))) \
        == []


def test_connmark_statement_is_compared_by_meaning() -> None:
    tables = parse_ruleset(json.dumps(_doc("ipv4")))
    keys = [t.key for r in tables["istio-ambient-mangle"].rules for t in r.terms]
    assert "ct mark set ct mark & 0xfffff111 | 0x111" in keys


def test_foreign_tables_and_families_are_ignored() -> None:
    doc = _doc("ipv4")
    doc["nftables"] += [
        {"table": {"family": "inet", "name": "filter", "handle": 99}},
        {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1}},
        {"table": {"family": "ip", "name": "istio-ambient-nat", "handle": 98}},
        {"set": {"family": "ip", "table": "istio-ambient-nat", "name": "s", "handle": 2}},
    ]
    assert sorted(parse_ruleset(json.dumps(doc))) == ["istio-ambient-mangle", "istio-ambient-nat"]


def test_objects_other_than_chains_and_rules_are_extras() -> None:
    doc = _doc("ipv4")
    doc["nftables"].append({"set": {"family": "inet", "table": "istio-ambient-nat", "name": "x",
                                    "type": "ipv4_addr", "handle": 50}})
    assert parse_ruleset(json.dumps(doc))["istio-ambient-nat"].extras == ("set x",)


def test_unmodelled_expressions_never_match() -> None:
    doc = _doc("ipv4")
    _rules(doc)[-1]["expr"].insert(0, {"limit": {"rate": 10, "per": "second"}})
    drift = nftables.drift(nftables.desired_tables(SPECS["ipv4"]), parse_ruleset(json.dumps(doc)))
    assert len(drift) == 1
    assert "<unmodelled" in drift[0]


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"nftables": {}}', '{"nftables": [1]}',
                                  '{"nftables": [{"a": 1, "b": 2}]}', "{" * 100000])
def test_not_nft_json_is_a_parse_error(text: str) -> None:
    with pytest.raises(RuleParseError):
        parse_ruleset(text)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.sampled_from(
        ["inet", "istio-ambient-nat", "output", "mark", "tcp", "==", "!=", "ip", "daddr"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["family", "table", "name", "chain", "expr", "match", "left", "right", "op", "meta",
         "key", "payload", "&", "|", "mangle", "value", "prefix", "addr", "len", "redirect",
         "port", "jump", "target", "prio", "hook", "type"]), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["table", "chain", "rule", "set"]), _JSON,
                                min_size=1, max_size=1), max_size=6))
def test_arbitrary_documents_parse_or_raise_parse_error(items: list[dict[str, Any]]) -> None:
    try:
        tables = parse_ruleset(json.dumps({"nftables": items}))
    except RuleParseError:
        return
    for table in tables.values():
        nftables.drift(nftables.desired_tables(SPECS["all_options"]), {table.name: table})


@settings(max_examples=200, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(SPECS)))
def test_any_changed_match_value_is_drift(data: st.DataObject, name: str) -> None:
    doc = copy.deepcopy(_doc(name))
    matches = [e["match"] for r in _rules(doc) for e in r["expr"] if "match" in e]
    target = data.draw(st.sampled_from(matches))
    old = target["right"]
    new = data.draw(st.sampled_from([1, 53, 4096, "udp", "10.1.2.3", "::2", "eth9"])
                    .filter(lambda v: str(v) != str(old)))
    target["right"] = new
    desired = nftables.desired_tables(SPECS[name])
    assert nftables.drift(desired, parse_ruleset(json.dumps(doc))) != []


@settings(max_examples=150, deadline=None)
@given(st.lists(_JSON, max_size=5), st.sampled_from(["istio-output", "prerouting"]))
def test_arbitrary_expressions_in_our_rules_become_terms_not_crashes(
    exprs: list[Any], chain: str
) -> None:
    doc = _doc("ipv4")
    doc["nftables"].append({"rule": {"family": "inet", "table": "istio-ambient-nat",
                                     "chain": chain, "handle": 77, "expr": exprs}})
    tables = parse_ruleset(json.dumps(doc))
    assert nftables.drift(nftables.desired_tables(SPECS["ipv4"]), tables) != []
