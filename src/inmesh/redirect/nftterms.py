"""Terms of an nft rule (a match or a statement) with a canonical key for comparison.

Sans-io. ``script`` is the text written to ``nft -f``; ``key`` is the same term in one canonical
spelling (addresses as networks, marks in hex, the ``==`` left out unless masked) that `nftjson`
rebuilds from the kernel's JSON, so two spellings of one rule compare equal.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

_L4PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp"}


@dataclass(frozen=True)
class Term:
    script: str
    key: str


def statement(text: str, key: str | None = None) -> Term:
    return Term(text, text if key is None else key)


def match(subject: str, value: str, op: str = "==", mask: int | None = None) -> Term:
    """A match such as ``ip daddr != 127.0.0.1/32`` or ``meta mark & 0xfff == 0x539``."""
    script_value = f'"{value}"' if subject in ("iifname", "oifname") else value
    return Term(_spell(subject, op, script_value, mask),
                canonical_match(subject, op, value, mask))


def canonical_match(subject: str, op: str, value: object, mask: int | None) -> str:
    """The key of a match; ``value`` may be a str (ours) or an int/str (from JSON)."""
    return _spell(subject, op, canonical_value(subject, value), mask)


def _spell(subject: str, op: str, value: str, mask: int | None) -> str:
    left = subject if mask is None else f"{subject} & {mask:#x}"
    if op == "==" and mask is None:
        return f"{left} {value}"
    return f"{left} {op} {value}"


def canonical_value(subject: str, value: object) -> str:
    """One spelling per value: networks for addresses, hex for marks, ints for ports."""
    try:
        if subject.endswith(("saddr", "daddr")):
            return str(ipaddress.ip_network(str(value), strict=False))
        if subject in ("meta mark", "ct mark"):
            return f"{_as_int(value):#x}"
        if subject.endswith(("sport", "dport")):
            return str(_as_int(value))
    except ValueError:
        return repr(value)
    if subject == "meta l4proto" and isinstance(value, int):
        return _L4PROTO.get(value, str(value))
    if subject in ("iifname", "oifname"):
        return f'"{value}"'
    return str(value)


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("bool is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 0)
    raise ValueError(f"not a number: {value!r}")
