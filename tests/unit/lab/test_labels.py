"""Label edits: kubectl syntax in, label maps out; ConfigError is the only escape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import ConfigError
from inmesh.lab.labels import (
    RemoveLabel,
    SetLabel,
    apply_label_ops,
    parse_label_op,
    parse_labels,
)


@pytest.mark.parametrize(
    ("text", "op"),
    [
        ("app=web", SetLabel("app", "web")),
        ("istio.io/dataplane-mode=ambient", SetLabel("istio.io/dataplane-mode", "ambient")),
        ("empty=", SetLabel("empty", "")),
        ("istio.io/dataplane-mode-", RemoveLabel("istio.io/dataplane-mode")),
        ("a.b_c-d=X.y_z-1", SetLabel("a.b_c-d", "X.y_z-1")),
    ],
)
def test_valid_label_edits(text: str, op: object) -> None:
    assert parse_label_op(text) == op


@pytest.mark.parametrize(
    "text",
    ["app", "=v", "-", "a b=c", "app=has space", "app=-lead", "/name=v", "Bad_Prefix/x=y",
     "x" * 64 + "=v", "k=" + "v" * 64, "k=v=w"],
)  # fmt: skip
def test_invalid_label_edits_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match=r"bad label|bad value"):
        parse_label_op(text)


def test_apply_sets_then_removes_in_order() -> None:
    ops = [SetLabel("a", "1"), RemoveLabel("b"), SetLabel("a", "2"), RemoveLabel("missing")]
    assert apply_label_ops({"b": "x", "c": "y"}, ops) == {"a": "2", "c": "y"}


def test_creation_labels_cannot_remove() -> None:
    assert parse_labels(["a=1", "b=2"]) == {"a": "1", "b": "2"}
    with pytest.raises(ConfigError, match="cannot remove"):
        parse_labels(["a-"])


@given(st.text(max_size=80))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        op = parse_label_op(text)
    except ConfigError:
        return
    assert isinstance(op, SetLabel | RemoveLabel)


_name = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?", fullmatch=True)


@given(key=_name, value=_name)
def test_set_round_trips(key: str, value: str) -> None:
    assert parse_label_op(f"{key}={value}") == SetLabel(key, value)
    assert parse_label_op(f"{key}-") == RemoveLabel(key)
