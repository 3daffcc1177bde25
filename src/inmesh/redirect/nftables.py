"""The native nftables rule set (reference 4.4), its drift, and the one-transaction nft script.

Sans-io. Three ``inet`` tables, each with base chains that jump to ``istio-prerouting`` /
``istio-output``. A rule is a tuple of `Term`s: ``script`` is what we write (Istio's text) and
``key`` is a canonical form that `nftjson` also derives from ``nft -j list`` output, so the
comparison is structural (chains, hooks, priorities, per-rule matches and statements).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from inmesh.constants import (
    CONN_MARK,
    DNS_PORT,
    INBOUND_HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    MARK_MASK,
    OUTBOUND_PORT,
    PROXY_MARK,
)
from inmesh.redirect.model import (
    CT_ZONE_DNS,
    DNS_PORT_UPSTREAM,
    LOOPBACK,
    NFT_FAMILY,
    NFT_TABLE_MANGLE,
    NFT_TABLE_NAT,
    NFT_TABLE_RAW,
    NFT_TABLES,
    PROBE_SNAT,
    RedirectSpec,
)
from inmesh.redirect.nftterms import Term, match, statement

PRERT, OUTPUT = "istio-prerouting", "istio-output"
IP = {4: "ip", 6: "ip6"}


@dataclass(frozen=True)
class NftChain:
    name: str
    type: str | None = None
    hook: str | None = None
    prio: int | None = None
    policy: str | None = None

    def declaration(self, table: str) -> str:
        head = f"add chain {NFT_FAMILY} {table} {self.name}"
        if self.hook is None:
            return head
        return f"{head} {{ type {self.type} hook {self.hook} priority {self.prio} ; }}"


def base(name: str, type_: str, prio: int) -> NftChain:
    return NftChain(name, type_, name, prio, "accept")


@dataclass(frozen=True)
class NftRule:
    chain: str
    terms: tuple[Term, ...]

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(t.key for t in self.terms)


@dataclass(frozen=True)
class NftTable:
    """A table as wanted, or as read back (``extras``: objects other than chains and rules)."""

    name: str
    chains: tuple[NftChain, ...]
    rules: tuple[NftRule, ...]
    extras: tuple[str, ...] = ()

    def rule_keys(self) -> dict[str, list[tuple[str, ...]]]:
        grouped: dict[str, list[tuple[str, ...]]] = {c.name: [] for c in self.chains}
        for rule in self.rules:
            grouped.setdefault(rule.chain, []).append(rule.key)
        return grouped


COUNTER = statement("counter")
ACCEPT, RETURN = statement("accept"), statement("return")
MARK_NOT_PROXY = match("meta mark", f"{PROXY_MARK:#x}", "!=", MARK_MASK)
TCP = match("meta l4proto", "tcp")


def redirect(port: int) -> Term:
    return statement(f"redirect to :{port}")


def desired_tables(spec: RedirectSpec) -> dict[str, NftTable]:
    """The tables this spec needs (raw only with DNS capture), keyed by name."""
    tables = [_nat(spec), _mangle()]
    if spec.dns_capture:
        tables.append(_raw())
    return {t.name: t for t in tables}


def _with_jumps(name: str, chains: tuple[NftChain, ...], rules: Iterable[NftRule]) -> NftTable:
    jumps = tuple(NftRule(c.name, (statement(f"jump {target}"),))
                  for c, target in zip(chains, (PRERT, OUTPUT), strict=True))
    chains = (*chains, NftChain(PRERT), NftChain(OUTPUT))
    return NftTable(name, chains, jumps + tuple(rules))


def _nat(spec: RedirectSpec) -> NftTable:
    fams = spec.families()
    prert = [NftRule(PRERT, (match("iifname", ifname), TCP, COUNTER, verdict))
             for ifname in spec.virtual_interfaces
             for verdict in (redirect(OUTBOUND_PORT), RETURN)]
    if spec.inbound_capture:
        prert += [NftRule(PRERT, (TCP, match(f"{IP[f]} saddr", PROBE_SNAT[f]), COUNTER, ACCEPT))
                  for f in fams]
        prert += [NftRule(PRERT, (match(f"{IP[f]} daddr", LOOPBACK[f], "!="),
                                  match("tcp dport", str(INBOUND_HBONE_PORT), "!="),
                                  MARK_NOT_PROXY, COUNTER, redirect(INBOUND_PLAINTEXT_PORT)))
                  for f in fams]
    output = [NftRule(OUTPUT, (TCP, match(f"{IP[f]} daddr", PROBE_SNAT[f]), COUNTER, ACCEPT))
              for f in fams]
    if spec.dns_capture:
        dns = str(DNS_PORT_UPSTREAM)
        output.append(NftRule(OUTPUT, (match("oifname", "lo", "!="), MARK_NOT_PROXY,
                                       match("udp dport", dns), COUNTER, redirect(DNS_PORT))))
        output += [NftRule(OUTPUT, (match(f"{IP[f]} daddr", LOOPBACK[f], "!="),
                                    match("tcp dport", dns), MARK_NOT_PROXY, COUNTER,
                                    redirect(DNS_PORT)))
                   for f in fams]
    output.append(NftRule(OUTPUT, (TCP, match("meta mark", f"{CONN_MARK:#x}", "==", MARK_MASK),
                                   COUNTER, ACCEPT)))
    output += [NftRule(OUTPUT, (match("oifname", "lo"), match(f"{IP[f]} daddr", LOOPBACK[f], "!="),
                                COUNTER, ACCEPT))
               for f in fams]
    output += [NftRule(OUTPUT, (TCP, match(f"{IP[f]} daddr", LOOPBACK[f], "!="), MARK_NOT_PROXY,
                                COUNTER, redirect(OUTBOUND_PORT)))
               for f in fams]
    chains = (base("prerouting", "nat", -100), base("output", "nat", -100))
    return _with_jumps(NFT_TABLE_NAT, chains, [*prert, *output])


def _mangle() -> NftTable:
    set_connmark = statement(f"ct mark set ct mark & 0xfffff000 | {CONN_MARK:#x}",
                             key=f"ct mark set ct mark & {0xFFFFF000 | CONN_MARK:#x} "
                                 f"| {CONN_MARK:#x}")
    rules = [
        NftRule(PRERT, (match("meta mark", f"{PROXY_MARK:#x}", "==", MARK_MASK), COUNTER,
                        set_connmark)),
        NftRule(OUTPUT, (match("ct mark", f"{CONN_MARK:#x}", "==", MARK_MASK), COUNTER,
                         statement("meta mark set ct mark"))),
    ]
    chains = (base("prerouting", "filter", -150), base("output", "route", -150))
    return _with_jumps(NFT_TABLE_MANGLE, chains, rules)


def _raw() -> NftTable:
    zone = statement(f"ct zone set {CT_ZONE_DNS}")
    dns = str(DNS_PORT_UPSTREAM)
    rules = [
        NftRule(OUTPUT, (match("udp dport", dns), match("meta mark", f"{PROXY_MARK:#x}", "==",
                                                          MARK_MASK), COUNTER, zone)),
        NftRule(PRERT, (match("udp sport", dns), MARK_NOT_PROXY, COUNTER, zone)),
    ]
    chains = (base("prerouting", "filter", -300), base("output", "filter", -300))
    return _with_jumps(NFT_TABLE_RAW, chains, rules)


def drift(desired: dict[str, NftTable], current: dict[str, NftTable]) -> list[str]:
    """Human-readable differences between wanted and present tables ([] = exact match)."""
    lines: list[str] = []
    for name in NFT_TABLES:
        want, have = desired.get(name), current.get(name)
        where = f"nft table {NFT_FAMILY} {name}"
        if want is None and have is not None:
            lines.append(f"{where}: present but not wanted")
        elif want is not None and have is None:
            lines.append(f"{where}: missing")
        elif want is not None and have is not None:
            lines += [f"{where}: {line}" for line in _table_drift(want, have)]
    return lines


def _table_drift(want: NftTable, have: NftTable) -> list[str]:
    lines = [f"unexpected {extra}" for extra in have.extras]
    want_chains = {c.name: c for c in want.chains}
    have_chains = {c.name: c for c in have.chains}
    for name in sorted(set(want_chains) | set(have_chains)):
        w, h = want_chains.get(name), have_chains.get(name)
        if w != h:
            lines.append(f"chain {name}: expected {_chain_text(w)}, found {_chain_text(h)}")
    want_rules, have_rules = want.rule_keys(), have.rule_keys()
    for chain in sorted(set(want_rules) | set(have_rules)):
        expected, actual = want_rules.get(chain, []), have_rules.get(chain, [])
        if expected != actual:
            lines.append(f"chain {chain}: rules differ: expected {_rules_text(expected)}, "
                         f"found {_rules_text(actual)}")
    return lines


def _chain_text(chain: NftChain | None) -> str:
    if chain is None:
        return "nothing"
    if chain.hook is None:
        return "a regular chain"
    return f"{{type {chain.type} hook {chain.hook} priority {chain.prio} policy {chain.policy}}}"


def _rules_text(rules: list[tuple[str, ...]]) -> str:
    return "[" + "; ".join(" ".join(rule) for rule in rules) + "]"


def plan_script(desired: dict[str, NftTable], current: dict[str, NftTable]) -> str:
    """An ``nft -f -`` transaction converging ``current`` to ``desired`` ('' = in sync)."""
    lines: list[str] = []
    for name in NFT_TABLES:
        want, have = desired.get(name), current.get(name)
        table = f"table {NFT_FAMILY} {name}"
        if want is None:
            if have is not None:
                lines += [f"add {table}", f"delete {table}"]
            continue
        if have is not None and not _table_drift(want, have):
            continue
        lines.append(f"add {table}")
        if have is not None and have.extras:
            lines += [f"delete {table}", f"add {table}"]
        else:
            lines.append(f"flush {table}")
            lines += [f"delete chain {NFT_FAMILY} {name} {c.name}"
                      for c in _stale_chains(want, have)]
        lines += [c.declaration(name) for c in want.chains]
        lines += [f"add rule {NFT_FAMILY} {name} {r.chain} "
                  + " ".join(t.script for t in r.terms) for r in want.rules]
    return "".join(f"{line}\n" for line in lines)


def _stale_chains(want: NftTable, have: NftTable | None) -> list[NftChain]:
    """Chains present that are not wanted, or declared differently (hook, type, priority)."""
    if have is None:
        return []
    wanted = set(want.chains)
    return [c for c in have.chains if c not in wanted]


def delete_script() -> str:
    """Removes all three tables in one transaction; ``add`` first makes it safe when absent."""
    return "".join(f"add table {NFT_FAMILY} {n}\ndelete table {NFT_FAMILY} {n}\n"
                   for n in NFT_TABLES)
