"""Test doubles for the redirect package: an in-memory iptables with restore/save semantics.

`FakeXtables` models what `iptables-restore --noflush` does with the lines our plans contain
(``*table``, ``:CHAIN - [0:0]`` creates or flushes, ``-A``, ``-D`` by exact spec, ``-X``,
``COMMIT``; one table section is all-or-nothing) and prints iptables-save text back, so plans
can be checked for convergence without root.
"""

from __future__ import annotations

import copy
import itertools
import shlex

BUILTIN = {
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}


class RestoreError(Exception):
    pass


class FakeXtables:
    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {}

    def table(self, name: str) -> dict[str, list[str]]:
        return self.tables.setdefault(name, {c: [] for c in BUILTIN[name]})

    def load(self, save_text: str) -> None:
        table: dict[str, list[str]] | None = None
        for line in save_text.splitlines():
            if line.startswith("*"):
                table = self.table(line[1:])
            elif line.startswith(":") and table is not None:
                table.setdefault(line[1:].split()[0], [])
            elif line.startswith("-A ") and table is not None:
                chain, spec = line[3:].split(" ", 1)
                table[chain].append(spec)

    def save(self) -> str:
        out: list[str] = []
        for name, chains in self.tables.items():
            out.append(f"*{name}")
            builtin = [c for c in BUILTIN[name] if c in chains]
            custom = sorted(c for c in chains if c not in BUILTIN[name])
            out += [f":{c} ACCEPT [0:0]" for c in builtin] + [f":{c} - [0:0]" for c in custom]
            out += [f"-A {c} {spec}" for c in builtin + custom for spec in chains[c]]
            out.append("COMMIT")
        return "".join(f"{line}\n" for line in out)

    def restore(self, text: str) -> None:
        staged: dict[str, list[str]] | None = None
        name = ""
        for line in text.splitlines():
            if line.startswith("*"):
                name, staged = line[1:], copy.deepcopy(self.table(line[1:]))
            elif staged is None:
                raise RestoreError(f"outside a table: {line}")
            elif line == "COMMIT":
                self.tables[name], staged = staged, None
            elif line.startswith(":"):
                staged[line[1:].split()[0]] = []
            else:
                _apply(staged, line)

    def add(self, table: str, line: str) -> None:
        chain, spec = line[3:].split(" ", 1)
        self.table(table).setdefault(chain, []).append(spec)


def _apply(staged: dict[str, list[str]], line: str) -> None:
    op, rest = line.split(" ", 1)
    if op == "-X":
        if staged.get(rest) or any(_target(s) == rest for c in staged.values() for s in c):
            raise RestoreError(f"chain {rest} busy")
        staged.pop(rest)
        return
    chain, spec = rest.split(" ", 1)
    if chain not in staged:
        raise RestoreError(f"no chain {chain}")
    if op == "-A":
        target = _target(spec)
        if target not in (None, "ACCEPT", "RETURN", "REDIRECT", "CONNMARK", "CT", "DROP") \
                and target not in staged:
            raise RestoreError(f"no target {target}")
        staged[chain].append(spec)
    elif op == "-D":
        if spec not in staged[chain]:
            raise RestoreError(f"no rule to delete: {line}")
        staged[chain].remove(spec)
    else:
        raise RestoreError(f"unknown op {line}")


def _target(spec: str) -> str | None:
    tokens = shlex.split(spec)
    for flag, value in itertools.pairwise(tokens):
        if flag in ("-j", "-g"):
            return value
    return None
