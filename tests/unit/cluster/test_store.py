"""The file-backed cluster store: round trips, atomic updates, cached reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from inmesh.cluster.model import PodMeta
from inmesh.cluster.store import FileClusterStore
from inmesh.errors import ConfigError


def _pod(uid: str = "u1", **kw: object) -> PodMeta:
    return PodMeta(uid=uid, name="web", namespace="default", node="n1", **kw)  # type: ignore[arg-type]


def test_pod_round_trips_through_the_store(tmp_path: Path) -> None:
    store = FileClusterStore(str(tmp_path / "cluster.json"))
    pod = _pod(labels={"app": "web"}, ips=("10.0.0.2",), netns="/run/netns/x")
    store.put_pod(pod)
    view = FileClusterStore(store.path).view()
    assert view.pods["u1"] == pod
    assert view.pod_by_name("default", "web") == pod
    assert "default" in view.namespaces


def test_view_is_reread_only_after_a_change(tmp_path: Path) -> None:
    store = FileClusterStore(str(tmp_path / "cluster.json"))
    assert store.view().pods == {}
    store.put_pod(_pod())
    first = store.view()
    assert store.view() is first
    store.set_namespace_labels("default", {"istio.io/dataplane-mode": "ambient"})
    second = store.view()
    assert second is not first
    assert second.namespace("default").labels == {"istio.io/dataplane-mode": "ambient"}
    assert second.revision == first.revision + 1


def test_corrupt_store_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        FileClusterStore(str(path)).view()


def test_malformed_pod_record_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="malformed pod record"):
        PodMeta.from_json({"uid": "x"})


def test_annotate_sets_and_removes_and_ignores_gone_pods(tmp_path: Path) -> None:
    store = FileClusterStore(str(tmp_path / "cluster.json"))
    store.put_pod(_pod())
    store.annotate("u1", "ambient.istio.io/redirection", "enabled")
    assert store.view().pods["u1"].annotations == {"ambient.istio.io/redirection": "enabled"}
    revision = store.view().revision
    store.annotate("u1", "ambient.istio.io/redirection", "enabled")
    assert store.view().revision == revision  # no change, no write
    store.annotate("u1", "ambient.istio.io/redirection", None)
    assert store.view().pods["u1"].annotations == {}
    store.annotate("gone", "ambient.istio.io/redirection", "enabled")
    assert "gone" not in store.view().pods
