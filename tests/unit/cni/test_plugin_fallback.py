"""With the agent down, the plugin reads the pod source: non-mesh pods start, mesh pods do not.

Runs the installed plugin as the runtime does, with no agent listening on the socket.
"""

from __future__ import annotations

import json
from pathlib import Path

from inmesh.cluster.model import PodMeta
from inmesh.cluster.store import FileClusterStore
from tests.unit.cni.conftest import POD_ARGS, run_plugin
from tests.unit.cni.test_plugin import PREV, assert_error, conf

# the pod that conftest's CNI_ARGS name, so the store can hold it
ARGS = dict(kv.split("=", 1) for kv in POD_ARGS.split(";") if "=" in kv)
NAME, NAMESPACE = ARGS["K8S_POD_NAME"], ARGS.get("K8S_POD_NAMESPACE", "default")
UID = ARGS.get("K8S_POD_UID", "")


def store_with(tmp_path: Path, labels: dict[str, str] | None) -> str:
    store = FileClusterStore(str(tmp_path / "cluster.json"))
    if labels is not None:
        store.put_pod(PodMeta(uid=UID or "u1", name=NAME, namespace=NAMESPACE, node="n1",
                              labels=labels))
    return store.path


def test_non_mesh_pod_starts_while_the_agent_is_down(tmp_path: Path) -> None:
    source = store_with(tmp_path, {})
    run = run_plugin("ADD", conf(str(tmp_path / "run"), pod_source=source))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["ips"] == PREV["ips"]
    assert "not a mesh pod" in run.stderr


def test_mesh_pod_is_held_back_while_the_agent_is_down(tmp_path: Path) -> None:
    source = store_with(tmp_path, {"istio.io/dataplane-mode": "ambient"})
    run = run_plugin("ADD", conf(str(tmp_path / "run"), pod_source=source))
    err = assert_error(run, 11)
    assert "it belongs in the mesh" in err["msg"]


def test_unknown_pod_or_unreadable_source_fails_closed(tmp_path: Path) -> None:
    run = run_plugin("ADD", conf(str(tmp_path / "run"), pod_source=store_with(tmp_path, None)))
    assert "is unknown" in assert_error(run, 11)["msg"]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    run = run_plugin("ADD", conf(str(tmp_path / "run"), pod_source=str(bad)))
    assert "is unknown" in assert_error(run, 11)["msg"]
