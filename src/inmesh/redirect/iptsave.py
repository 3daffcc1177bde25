"""Reading `iptables-save` output: which chains and rules of mangle/nat/raw belong to us.

Sans-io. `parse_save` reads the text format (tables, chain declarations, ``-A`` lines) and
`ours` keeps what inmesh/Istio owns: the ISTIO_PRERT/ISTIO_OUTPUT chains, their rules, and every
rule elsewhere that jumps (or goes) to them. Lines are kept verbatim: iptables-save prints one
canonical form, and the desired rules are written in that same form, so sets of lines compare.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from inmesh.redirect.model import IPT_TABLES, OUR_CHAINS, RuleParseError


@dataclass(frozen=True)
class SavedTable:
    """One ``*table`` section: its chain names (in order) and its ``-A`` lines (in order)."""

    chains: tuple[str, ...]
    rules: tuple[str, ...]


@dataclass(frozen=True)
class OurTable:
    """Our part of one table: our chains that exist, and our lines (jumps and chain rules)."""

    chains: frozenset[str]
    lines: tuple[str, ...]

    def by_chain(self) -> dict[str, tuple[str, ...]]:
        """Lines grouped by the chain they are appended to, keeping their order."""
        grouped: dict[str, list[str]] = {}
        for line in self.lines:
            grouped.setdefault(rule_chain(line), []).append(line)
        return {chain: tuple(lines) for chain, lines in grouped.items()}


def parse_save(text: str) -> dict[str, SavedTable]:
    """Parse iptables-save / ip6tables-save output. Raises RuleParseError on anything else."""
    tables: dict[str, SavedTable] = {}
    current: tuple[str, list[str], list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            if current is not None or not line[1:] or line[1:] in tables:
                raise RuleParseError(f"iptables-save line {number}: unexpected table {line!r}")
            current = (line[1:], [], [])
        elif current is None:
            raise RuleParseError(f"iptables-save line {number}: {line!r} outside a table")
        elif line == "COMMIT":
            tables[current[0]] = SavedTable(tuple(current[1]), tuple(current[2]))
            current = None
        elif line.startswith(":"):
            current[1].append(_chain_declaration(line, number))
        elif line.startswith("-A "):
            rule_chain(line)  # validates
            current[2].append(line)
        else:
            raise RuleParseError(f"iptables-save line {number}: cannot read {line!r}")
    if current is not None:
        raise RuleParseError(f"iptables-save: table {current[0]!r} has no COMMIT")
    return tables


def _chain_declaration(line: str, number: int) -> str:
    parts = line[1:].split()
    if len(parts) != 3 or not parts[0]:
        raise RuleParseError(f"iptables-save line {number}: bad chain declaration {line!r}")
    return parts[0]


def rule_chain(line: str) -> str:
    """The chain of a ``-A CHAIN ...`` line."""
    parts = line.split(maxsplit=2)
    if len(parts) < 2 or parts[0] != "-A":
        raise RuleParseError(f"not an iptables rule line: {line!r}")
    return parts[1]


def rule_target(line: str) -> str | None:
    """The ``-j``/``-g`` target of a rule line, or None."""
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise RuleParseError(f"cannot tokenize iptables rule {line!r}: {exc}") from exc
    for flag, value in itertools.pairwise(tokens):
        if flag in ("-j", "-g", "--jump", "--goto"):
            return value
    return None


def ours(saved: dict[str, SavedTable]) -> dict[str, OurTable]:
    """Our chains and lines per table (only tables where something of ours exists)."""
    result: dict[str, OurTable] = {}
    for name in IPT_TABLES:
        table = saved.get(name)
        if table is None:
            continue
        chains = frozenset(c for c in table.chains if c in OUR_CHAINS)
        lines = tuple(_our_lines(table.rules))
        if chains or lines:
            result[name] = OurTable(chains, lines)
    return result


def _our_lines(rules: Iterable[str]) -> Iterable[str]:
    for line in rules:
        if rule_chain(line) in OUR_CHAINS or rule_target(line) in OUR_CHAINS:
            yield line
