"""SPIFFE workload identities: strict parsing and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.errors import ConfigError
from inmesh.identity import SpiffeId


def test_round_trip() -> None:
    sid = SpiffeId.for_workload("shop", "web")
    assert sid.uri == "spiffe://cluster.local/ns/shop/sa/web"
    assert SpiffeId.parse(sid.uri) == sid
    assert SpiffeId.for_workload("shop", "", "example.org").service_account == "default"


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://cluster.local/ns/shop",
        "spiffe://cluster.local/ns/shop/sa/web/extra",
        "https://cluster.local/ns/shop/sa/web",
        "spiffe://Cluster.local/ns/shop/sa/web",
        "spiffe://cluster.local/ns/-bad/sa/web",
        "spiffe://cluster.local/ns/shop/sa/",
    ],
)
def test_anything_else_is_refused(uri: str) -> None:
    with pytest.raises(ConfigError):
        SpiffeId.parse(uri)


@given(st.text(max_size=120))
def test_parse_raises_only_config_error(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except ConfigError:
        return
    assert sid.uri == text
