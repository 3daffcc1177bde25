"""Parsing iptables-save output and picking out what belongs to us."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inmesh.redirect.iptsave import OurTable, SavedTable, ours, parse_save, rule_target
from inmesh.redirect.model import RuleParseError

KERNEL = Path(__file__).parent / "golden" / "kernel"


def test_parses_real_iptables_save_output() -> None:
    tables = parse_save((KERNEL / "dns.iptables-save").read_text())
    assert list(tables) == ["mangle", "raw", "nat"]
    assert tables["raw"].chains == ("PREROUTING", "OUTPUT", "ISTIO_OUTPUT", "ISTIO_PRERT")
    assert tables["raw"].rules[0] == "-A PREROUTING -j ISTIO_PRERT"


def test_empty_output_and_comments_mean_no_tables() -> None:
    assert parse_save("") == {}
    assert parse_save("# Warning: iptables-legacy tables present\n\n") == {}


SAVE_WITH_FOREIGN = """\
*filter
:INPUT ACCEPT [0:0]
:ISTIO_OUTPUT - [0:0]
-A INPUT -j ISTIO_OUTPUT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_OUTPUT - [0:0]
:KUBE-X - [0:0]
-A OUTPUT -m comment --comment "not -j ISTIO_OUTPUT" -j ACCEPT
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A OUTPUT -j KUBE-X
-A KUBE-X -g ISTIO_OUTPUT
-A ISTIO_OUTPUT -j RETURN
COMMIT
"""


def test_ours_keeps_our_chains_and_every_jump_to_them_only() -> None:
    found = ours(parse_save(SAVE_WITH_FOREIGN))
    assert found == {
        "nat": OurTable(frozenset({"ISTIO_OUTPUT"}), (
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
            "-A KUBE-X -g ISTIO_OUTPUT",
            "-A ISTIO_OUTPUT -j RETURN",
        )),
    }  # the filter table is never ours, and a comment mentioning the chain is not a jump


def test_rule_target_reads_quoted_arguments() -> None:
    assert rule_target('-A X -m comment --comment "a b" -j ACCEPT') == "ACCEPT"
    assert rule_target("-A X -p tcp") is None
    with pytest.raises(RuleParseError, match="tokenize"):
        rule_target('-A X -m comment --comment "open -j ACCEPT')


@pytest.mark.parametrize("text", [
    "-A OUTPUT -j ACCEPT\n",
    "*nat\n-A OUTPUT -j ACCEPT\n",
    "*nat\nCOMMIT\n*nat\nCOMMIT\n",
    "*nat\n*raw\nCOMMIT\n",
    "*nat\n:BAD\nCOMMIT\n",
    "*nat\n-I OUTPUT -j ACCEPT\nCOMMIT\n",
    "*\nCOMMIT\n",
    "*nat\n-A\nCOMMIT\n",
])
def test_malformed_output_is_a_parse_error(text: str) -> None:
    with pytest.raises(RuleParseError):
        parse_save(text)


@settings(deadline=None)
@given(st.text(alphabet=st.sampled_from(list("*:-A COMMITnat\"#\n")), max_size=200))
def test_arbitrary_text_parses_or_raises_parse_error_only(text: str) -> None:
    try:
        tables = parse_save(text)
    except RuleParseError:
        return
    for table in tables.values():
        assert all(rule.startswith("-A ") for rule in table.rules)


_NAME = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_-", min_size=1, max_size=12)
_TABLE = st.builds(
    lambda chains, specs: SavedTable(tuple(chains), tuple(
        f"-A {chains[i % len(chains)]} {spec}" for i, spec in enumerate(specs))),
    st.lists(_NAME, min_size=1, max_size=4, unique=True),
    st.lists(st.sampled_from(["-j ACCEPT", "-p tcp -m tcp --dport 1 -j RETURN",
                              "-j ISTIO_PRERT", '-m comment --comment "x y" -j DROP']),
             max_size=6),
)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["mangle", "nat", "raw", "filter"]), _TABLE, max_size=4))
def test_printed_tables_parse_back_identically(tables: dict[str, SavedTable]) -> None:
    text = "".join(
        f"# Generated\n*{name}\n"
        + "".join(f":{c} - [0:0]\n" for c in t.chains)
        + "".join(f"{r}\n" for r in t.rules) + "COMMIT\n"
        for name, t in tables.items())
    assert parse_save(text) == tables
