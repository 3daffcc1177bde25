"""Pod placement and the CNI_ARGS a runtime passes."""

from __future__ import annotations

import pytest

from inmesh.errors import ConfigError, NotFoundError
from inmesh.lab.pods import check_dns_label, cni_args, pick_node
from inmesh.lab.state import LabState, NodeRecord, PodRecord


def _lab(*pods_on: str) -> LabState:
    s = LabState().with_node(NodeRecord("n1", 1)).with_node(NodeRecord("n2", 2))
    for i, node in enumerate(pods_on):
        s = s.with_pod(PodRecord(f"u{i}", f"p{i}", "default", node, f"ns{i}", "c"))
    return s


def test_least_busy_node_wins_first_index_on_a_tie() -> None:
    assert pick_node(_lab(), None) == "n1"
    assert pick_node(_lab("n1"), None) == "n2"
    assert pick_node(_lab("n1", "n2"), None) == "n1"


def test_requested_node_must_exist() -> None:
    assert pick_node(_lab("n2", "n2"), "n2") == "n2"
    with pytest.raises(NotFoundError, match="no node 'n9'"):
        pick_node(_lab(), "n9")
    with pytest.raises(NotFoundError, match="lab up"):
        pick_node(LabState(), None)


def test_cni_args_are_kubelets() -> None:
    rec = PodRecord("uid-1", "web", "shop", "n1", "inmesh-pod-uid1", "abc")
    assert cni_args(rec) == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "shop",
        "K8S_POD_NAME": "web",
        "K8S_POD_INFRA_CONTAINER_ID": "abc",
        "K8S_POD_UID": "uid-1",
    }


@pytest.mark.parametrize("bad", ["", "Web", "web_1", "-web", "web-", "a" * 64, "a;b", "k=v"])
def test_names_must_be_dns_labels(bad: str) -> None:
    with pytest.raises(ConfigError, match="bad pod name"):
        check_dns_label("pod name", bad)


def test_good_names_pass() -> None:
    assert check_dns_label("namespace", "shop-2") == "shop-2"
