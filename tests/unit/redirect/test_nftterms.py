"""Canonical keys: one spelling per meaning, so our text and the kernel's JSON compare equal."""

from __future__ import annotations

import pytest

from inmesh.redirect.nftterms import canonical_match, canonical_value, match, statement


@pytest.mark.parametrize(("subject", "ours", "kernel"), [
    ("ip daddr", "127.0.0.1/32", "127.0.0.1"),
    ("ip6 saddr", "fd16:9254:7127:1337:ffff:ffff:ffff:ffff",
     "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"),
    ("ip6 daddr", "::1/128", "::1"),
    ("meta mark", "0x539", 1337),
    ("ct mark", "0x111", 273),
    ("tcp dport", "15008", 15008),
    ("meta l4proto", "tcp", 6),
    ("meta l4proto", "tcp", "tcp"),
    ("iifname", "virt0", "virt0"),
])
def test_our_spelling_and_the_kernels_have_one_key(subject: str, ours: str, kernel: object) -> None:
    assert canonical_value(subject, ours) == canonical_value(subject, kernel)


def test_different_values_have_different_keys() -> None:
    assert canonical_value("ip daddr", "10.0.0.0/8") != canonical_value("ip daddr", "10.0.0.0")
    assert canonical_value("meta mark", 1337) != canonical_value("meta mark", 1338)


def test_unreadable_values_stay_distinct_instead_of_raising() -> None:
    assert canonical_value("ip daddr", "not-an-ip") == "'not-an-ip'"
    assert canonical_value("tcp dport", True) == "True"


def test_match_script_is_nft_syntax_and_key_is_canonical() -> None:
    term = match("meta mark", "0x539", "!=", 0xFFF)
    assert term.script == "meta mark & 0xfff != 0x539"
    assert term.key == canonical_match("meta mark", "!=", 1337, 4095)
    assert match("oifname", "lo").script == 'oifname "lo"'
    assert match("ip saddr", "169.254.7.127").key == "ip saddr 169.254.7.127/32"


def test_statement_key_defaults_to_its_text() -> None:
    assert statement("accept").key == "accept"
    assert statement("a", key="b").key == "b"
