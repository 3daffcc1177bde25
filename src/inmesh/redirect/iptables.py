"""The iptables rule set (reference 4.2), its drift against iptables-save, and the restore plan.

Sans-io. `desired_tables(spec, family)` writes Istio's in-pod rules in exactly the canonical form
iptables-save prints (``-m tcp`` added, ``/32`` prefixes, ``--to-ports``), so verification is a
comparison of lines. `plan_restore(desired, current)` returns one ``iptables-restore --noflush``
input that converges the family in one run: declaring ``:ISTIO_PRERT - [0:0]`` creates or
flushes our chain, each wrong jump is deleted by its exact spec, the right jumps are appended
once, and unwanted chains are flushed and deleted. Only drifted tables appear in the plan.
Atomicity is per table: iptables(-nft)-restore commits each ``*table ... COMMIT`` section as one
transaction (a failing section leaves earlier ones committed; the backend's verify then fails).
"""

from __future__ import annotations

from collections import Counter

from inmesh.constants import (
    DNS_PORT,
    INBOUND_HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    OUTBOUND_PORT,
)
from inmesh.redirect.iptsave import OurTable, rule_chain
from inmesh.redirect.model import (
    CHAIN_OUTPUT,
    CHAIN_PRERT,
    CONN_MARK_SPEC,
    CT_ZONE_DNS,
    DNS_PORT_UPSTREAM,
    IPT_TABLES,
    LOOPBACK,
    OUR_CHAINS,
    PROBE_SNAT_PREFIX,
    PROXY_MARK_SPEC,
    RESTORE_MASK,
    RedirectSpec,
)

PRERT, OUTPUT = f"-A {CHAIN_PRERT}", f"-A {CHAIN_OUTPUT}"
M, T = PROXY_MARK_SPEC, CONN_MARK_SPEC
JUMPS = {
    "mangle": (f"-A PREROUTING -j {CHAIN_PRERT}", f"-A OUTPUT -j {CHAIN_OUTPUT}"),
    "nat": (f"-A OUTPUT -j {CHAIN_OUTPUT}", f"-A PREROUTING -j {CHAIN_PRERT}"),
    "raw": (f"-A PREROUTING -j {CHAIN_PRERT}", f"-A OUTPUT -j {CHAIN_OUTPUT}"),
}


def desired_tables(spec: RedirectSpec, family: int) -> dict[str, OurTable]:
    """Our chains and lines per table for one family; {} when the family is off."""
    if family not in spec.families():
        return {}
    tables = {"mangle": _mangle(), "nat": _nat(spec, family)}
    if spec.dns_capture:
        tables["raw"] = _raw()
    return {name: OurTable(frozenset(OUR_CHAINS), JUMPS[name] + lines)
            for name, lines in tables.items()}


def _mangle() -> tuple[str, ...]:
    restore = f"--nfmask {RESTORE_MASK:#x} --ctmask {RESTORE_MASK:#x}"
    return (
        f"{PRERT} -m mark --mark {M} -j CONNMARK --set-xmark {T}",
        f"{OUTPUT} -m connmark --mark {T} -j CONNMARK --restore-mark {restore}",
    )


def _nat(spec: RedirectSpec, family: int) -> tuple[str, ...]:
    lo, snat = LOOPBACK[family], PROBE_SNAT_PREFIX[family]
    prert: list[str] = []
    for ifname in spec.virtual_interfaces:
        prert += [f"{PRERT} -i {ifname} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}",
                  f"{PRERT} -i {ifname} -p tcp -j RETURN"]
    if spec.inbound_capture:
        prert += [f"{PRERT} -s {snat} -p tcp -m tcp -j ACCEPT",
                  f"{PRERT} ! -d {lo} -p tcp -m tcp ! --dport {INBOUND_HBONE_PORT} "
                  f"-m mark ! --mark {M} -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}"]
    output = [f"{OUTPUT} -d {snat} -p tcp -m tcp -j ACCEPT"]
    if spec.dns_capture:
        output += [f"{OUTPUT} ! -o lo -p udp -m mark ! --mark {M} -m udp "
                   f"--dport {DNS_PORT_UPSTREAM} -j REDIRECT --to-ports {DNS_PORT}",
                   f"{OUTPUT} ! -d {lo} -p tcp -m tcp --dport {DNS_PORT_UPSTREAM} "
                   f"-m mark ! --mark {M} -j REDIRECT --to-ports {DNS_PORT}"]
    output += [f"{OUTPUT} -p tcp -m mark --mark {T} -j ACCEPT",
               f"{OUTPUT} ! -d {lo} -o lo -j ACCEPT",
               f"{OUTPUT} ! -d {lo} -p tcp -m mark ! --mark {M} "
               f"-j REDIRECT --to-ports {OUTBOUND_PORT}"]
    return (*prert, *output)


def _raw() -> tuple[str, ...]:
    zone = f"-j CT --zone {CT_ZONE_DNS}"
    return (
        f"{OUTPUT} -p udp -m mark --mark {M} -m udp --dport {DNS_PORT_UPSTREAM} {zone}",
        f"{PRERT} -p udp -m mark ! --mark {M} -m udp --sport {DNS_PORT_UPSTREAM} {zone}",
    )


def drift(desired: dict[str, OurTable], current: dict[str, OurTable], label: str) -> list[str]:
    """Human-readable differences for one family ([] = exact match). ``label``: "iptables v4"."""
    lines: list[str] = []
    for table in IPT_TABLES:
        want, have = desired.get(table), current.get(table)
        where = f"{label} {table}"
        if want is None and have is not None:
            lines.append(f"{where}: leftover {_describe(have)}")
        elif want is not None and have is None:
            lines.append(f"{where}: our chains and jumps are missing")
        elif want is not None and have is not None:
            lines += _table_drift(want, have, where)
    return lines


def _describe(table: OurTable) -> str:
    return f"chains {sorted(table.chains)} and {len(table.lines)} rule(s)"


def _table_drift(want: OurTable, have: OurTable, where: str) -> list[str]:
    lines = [f"{where}: chain {c} is missing" for c in sorted(want.chains - have.chains)]
    want_by, have_by = want.by_chain(), have.by_chain()
    for chain in sorted(set(want_by) | set(have_by)):
        expected, actual = want_by.get(chain, ()), have_by.get(chain, ())
        if expected == actual:
            continue
        missing, extra = Counter(expected) - Counter(actual), Counter(actual) - Counter(expected)
        lines += [f"{where}: missing rule {rule!r}" for rule in missing.elements()]
        lines += [f"{where}: unexpected rule {rule!r}" for rule in extra.elements()]
        if not missing and not extra:
            lines.append(f"{where}: rules of {chain} are out of order")
    return lines


def plan_restore(desired: dict[str, OurTable], current: dict[str, OurTable]) -> str:
    """iptables-restore --noflush input converging ``current`` to ``desired`` ('' = in sync)."""
    sections: list[str] = []
    for table in IPT_TABLES:
        want, have = desired.get(table), current.get(table)
        if want == have or (want is not None and have is not None
                            and not _table_drift(want, have, "")):
            continue
        body = _reconcile(want, have) if want is not None else _teardown(have)
        if body:
            sections.append("\n".join([f"*{table}", *body, "COMMIT"]))
    return "".join(f"{section}\n" for section in sections)


def _reconcile(want: OurTable, have: OurTable | None) -> list[str]:
    body = [f":{chain} - [0:0]" for chain in OUR_CHAINS]  # creates, or flushes if it exists
    want_by = want.by_chain()
    have_by = have.by_chain() if have is not None else {}
    for chain in dict.fromkeys([*want_by, *have_by]):
        if chain in OUR_CHAINS:
            continue
        expected, actual = want_by.get(chain, ()), have_by.get(chain, ())
        if expected != actual:
            body += [_delete(line) for line in actual] + list(expected)
    for chain in OUR_CHAINS:
        body += want_by.get(chain, ())
    return body


def _teardown(have: OurTable | None) -> list[str]:
    if have is None:
        return []
    jumps = [_delete(line) for line in have.lines if rule_chain(line) not in OUR_CHAINS]
    chains = sorted(have.chains)
    return jumps + [f":{c} - [0:0]" for c in chains] + [f"-X {c}" for c in chains]


def _delete(line: str) -> str:
    """The ``-D`` twin of an ``-A`` line (deletes the first rule with exactly that spec)."""
    return "-D" + line[2:]


def removal_plan(current: dict[str, OurTable]) -> str:
    """iptables-restore input that removes everything of ours ('' when nothing is there)."""
    return plan_restore({}, current)
