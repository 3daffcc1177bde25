"""Label edits as `kubectl label` spells them: `key=value` sets, `key-` removes.

Pure parsing and application; keys and values follow Kubernetes' syntax rules, so that what
works here would work on a cluster. `ConfigError` is the only exception that escapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from inmesh.errors import ConfigError

_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_NAME_RE = re.compile(_NAME)
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_PREFIX = 253


@dataclass(frozen=True)
class SetLabel:
    key: str
    value: str


@dataclass(frozen=True)
class RemoveLabel:
    key: str


LabelOp = SetLabel | RemoveLabel


def check_label_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > _MAX_PREFIX or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ConfigError(f"bad label key {key!r}: the prefix must be a DNS subdomain")
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"bad label key {key!r}: the name must be 1-63 of [A-Za-z0-9-_.],"
            " starting and ending alphanumeric"
        )
    return key


def check_label_value(key: str, value: str) -> str:
    if value and not _NAME_RE.fullmatch(value):
        raise ConfigError(
            f"bad value {value!r} for label {key!r}: at most 63 of [A-Za-z0-9-_.],"
            " starting and ending alphanumeric"
        )
    return value


def parse_label_op(text: str) -> LabelOp:
    """`k=v` → SetLabel, `k-` → RemoveLabel; anything else is a ConfigError."""
    if "=" in text:
        key, _, value = text.partition("=")
        return SetLabel(check_label_key(key), check_label_value(key, value))
    if text.endswith("-"):
        return RemoveLabel(check_label_key(text[:-1]))
    raise ConfigError(f"bad label {text!r}: write KEY=VALUE to set or KEY- to remove")


def parse_label_ops(texts: Iterable[str]) -> list[LabelOp]:
    return [parse_label_op(t) for t in texts]


def parse_labels(texts: Iterable[str]) -> dict[str, str]:
    """Labels given at creation (`-l k=v`): only settings are allowed."""
    labels: dict[str, str] = {}
    for op in parse_label_ops(texts):
        if isinstance(op, RemoveLabel):
            raise ConfigError(f"cannot remove label {op.key!r} from a pod being created")
        labels[op.key] = op.value
    return labels


def apply_label_ops(labels: Mapping[str, str], ops: Iterable[LabelOp]) -> dict[str, str]:
    """A new label map with ``ops`` applied in order (removing an absent key is a no-op)."""
    out = dict(labels)
    for op in ops:
        if isinstance(op, SetLabel):
            out[op.key] = op.value
        else:
            out.pop(op.key, None)
    return out
