"""The CNI runtime driver against scripted fake plugins (and the real inmesh-cni), without root.

Each fake plugin logs its invocation (env + stdin) to a JSON-lines file named in its config and
does what its config says: add an address to the result, fail with an error object, print junk.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from inmesh.cni.install import install
from inmesh.cni.runtime import CniInvocation, CniPluginError, CniRuntime
from inmesh.errors import ConfigError, NotFoundError
from tests.unit.cni.fake_agent import FakeAgent

FAKE_PLUGIN = """#!{python}
import json, os, sys, time
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
env = {{k: v for k, v in os.environ.items() if k.startswith(("CNI_", "INMESH_TEST_"))}}
with open(conf["log"], "a") as f:
    f.write(json.dumps({{"plugin": conf["type"], "command": cmd, "env": env, "conf": conf}}) + "\\n")
what = conf.get("fail", {{}}).get(cmd)
if what == "hang":
    time.sleep(60)
if what == "junk":
    sys.stderr.write("plugin exploded\\n")
    sys.exit(2)
if what:
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": what, "msg": "failed on purpose",
                      "details": conf["type"]}}))
    sys.exit(1)
if cmd == "ADD":
    result = conf.get("prevResult") or {{"cniVersion": conf["cniVersion"], "ips": []}}
    if "add_ip" in conf:
        result = {{**result, "ips": [*result.get("ips", []), {{"address": conf["add_ip"]}}]}}
    print(json.dumps(result))
"""

ARGS = {"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-1", "K8S_POD_UID": "uid-1"}


class Node:
    """A conf dir, bin dir and cache dir in tmp_path, with fake plugins and a call log."""

    def __init__(self, root: Path) -> None:
        self.conf, self.bin, self.cache = root / "net.d", root / "bin", root / "cache"
        for d in (self.conf, self.bin):
            d.mkdir()
        self.log = root / "calls.jsonl"
        self.log.touch()

    def plugin(self, name: str) -> None:
        path = self.bin / name
        path.write_text(FAKE_PLUGIN.format(python=sys.executable))
        path.chmod(0o755)

    def conflist(self, plugins: list[dict[str, Any]], version: str = "1.0.0") -> None:
        for p in plugins:
            p.setdefault("log", str(self.log))
        obj = {"cniVersion": version, "name": "podnet", "plugins": plugins}
        (self.conf / "10-podnet.conflist").write_text(json.dumps(obj))

    def runtime(self, **kwargs: Any) -> CniRuntime:
        return CniRuntime(str(self.conf), [str(self.bin)], str(self.cache), **kwargs)

    def calls(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        self.log.write_text("")
        return [json.loads(line) for line in lines]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path)
    for name in ("ifplug", "chained", "other"):
        n.plugin(name)
    return n


INV = CniInvocation("cid-1", "/var/run/netns/pod-1", "eth0", ARGS)


def summary(calls: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [(c["plugin"], c["command"], c["conf"].get("prevResult")) for c in calls]


def test_add_chains_results_and_injects_name_and_version(node: Node) -> None:
    node.conflist([{"type": "ifplug", "add_ip": "10.1.0.5/24"}, {"type": "chained"}])
    result = node.runtime().add(INV)
    assert result == {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}]}
    first, second = node.calls()
    assert (first["plugin"], first["command"]) == ("ifplug", "ADD")
    assert "prevResult" not in first["conf"]
    assert second["conf"]["prevResult"] == result
    for call in (first, second):
        assert (call["conf"]["name"], call["conf"]["cniVersion"]) == ("podnet", "1.0.0")
        assert call["env"] == {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "cid-1",
            "CNI_NETNS": "/var/run/netns/pod-1",
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;"
            "K8S_POD_UID=uid-1",
            "CNI_PATH": str(node.bin),
        }
    cached = json.loads((node.cache / "results" / "podnet-cid-1-eth0").read_text())
    assert cached["kind"] == "cniCacheV1"
    assert cached["result"] == result


def test_failed_add_rolls_back_in_reverse_and_caches_nothing(node: Node) -> None:
    node.conflist(
        [
            {"type": "ifplug", "add_ip": "10.1.0.5/24"},
            {"type": "chained", "add_ip": "10.2.0.5/24"},
            {"type": "other", "fail": {"ADD": 11}},
        ]
    )
    with pytest.raises(CniPluginError) as info:
        node.runtime().add(INV)
    err = info.value
    assert (err.plugin, err.code, err.msg, err.details) == (
        "other",
        11,
        "failed on purpose",
        "other",
    )
    partial = {
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.1.0.5/24"}, {"address": "10.2.0.5/24"}],
    }
    assert summary(node.calls())[3:] == [
        ("other", "DEL", partial),
        ("chained", "DEL", partial),
        ("ifplug", "DEL", partial),
    ]
    assert not (node.cache / "results" / "podnet-cid-1-eth0").exists()


def test_plugin_exit_without_error_object_is_code_999_with_its_stderr(node: Node) -> None:
    node.conflist([{"type": "ifplug", "fail": {"ADD": "junk"}}])
    with pytest.raises(CniPluginError) as info:
        node.runtime().add(INV)
    assert info.value.code == 999
    assert "plugin exploded" in info.value.details
    assert summary(node.calls()) == [("ifplug", "ADD", None), ("ifplug", "DEL", None)]


def test_delete_runs_in_reverse_with_the_cached_result_then_forgets_it(node: Node) -> None:
    node.conflist([{"type": "ifplug", "add_ip": "10.1.0.5/24"}, {"type": "chained"}])
    rt = node.runtime()
    result = rt.add(INV)
    node.calls()
    rt.delete(INV)
    assert summary(node.calls()) == [("chained", "DEL", result), ("ifplug", "DEL", result)]
    assert not (node.cache / "results" / "podnet-cid-1-eth0").exists()


def test_second_delete_with_empty_netns_runs_without_prev_result(node: Node) -> None:
    node.conflist([{"type": "ifplug", "add_ip": "10.1.0.5/24"}, {"type": "chained"}])
    rt = node.runtime()
    rt.add(INV)
    rt.delete(INV)
    node.calls()
    rt.delete(CniInvocation("cid-1", "", "eth0", ARGS))
    calls = node.calls()
    assert summary(calls) == [("chained", "DEL", None), ("ifplug", "DEL", None)]
    assert {c["env"]["CNI_NETNS"] for c in calls} == {""}


def test_delete_without_config_uses_the_config_cached_at_add(node: Node) -> None:
    node.conflist([{"type": "ifplug", "add_ip": "10.1.0.5/24"}])
    rt = node.runtime()
    result = rt.add(INV)
    (node.conf / "10-podnet.conflist").unlink()
    node.calls()
    rt.delete(INV)
    assert summary(node.calls()) == [("ifplug", "DEL", result)]
    rt.delete(INV)
    assert node.calls() == [], "no config and no cache: nothing to run"


def test_failed_delete_raises_and_keeps_the_cache_for_a_retry(node: Node) -> None:
    node.conflist([{"type": "ifplug", "add_ip": "10.1.0.5/24"}, {"type": "other"}])
    rt = node.runtime()
    rt.add(INV)
    node.conflist([{"type": "ifplug"}, {"type": "other", "fail": {"DEL": 5}}])
    with pytest.raises(CniPluginError, match="code 5"):
        rt.delete(INV)
    assert (node.cache / "results" / "podnet-cid-1-eth0").exists()


def test_check_replays_the_cached_result_in_order(node: Node) -> None:
    node.conflist([{"type": "ifplug", "add_ip": "10.1.0.5/24"}, {"type": "chained"}])
    rt = node.runtime()
    result = rt.add(INV)
    node.calls()
    rt.check(INV)
    assert summary(node.calls()) == [("ifplug", "CHECK", result), ("chained", "CHECK", result)]


def test_check_needs_a_cached_add_and_a_0_4_0_config(node: Node) -> None:
    node.conflist([{"type": "ifplug"}])
    with pytest.raises(NotFoundError, match="no cached ADD"):
        node.runtime().check(INV)
    node.conflist([{"type": "ifplug"}], version="0.3.1")
    with pytest.raises(ConfigError, match="no CHECK"):
        node.runtime().check(INV)


def test_missing_plugin_binary_fails_before_running_anything(node: Node) -> None:
    node.conflist([{"type": "ifplug"}, {"type": "absent"}])
    with pytest.raises(ConfigError, match="absent not found"):
        node.runtime().add(INV)
    assert node.calls() == []


def test_single_conf_file_runs_as_a_one_plugin_chain(node: Node) -> None:
    conf = {"cniVersion": "0.4.0", "name": "solo", "type": "ifplug", "log": str(node.log)}
    conf["add_ip"] = "10.3.0.2/24"
    (node.conf / "05-solo.conf").write_text(json.dumps(conf))
    result = node.runtime().add(INV)
    assert result == {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.3.0.2/24"}]}


def test_hung_plugin_times_out_and_is_rolled_back(node: Node) -> None:
    node.conflist([{"type": "ifplug", "fail": {"ADD": "hang"}}])
    with pytest.raises(CniPluginError, match=r"timed out after 0\.5s") as info:
        node.runtime(timeout=0.5).add(INV)
    assert info.value.code == 999
    assert summary(node.calls()) == [("ifplug", "ADD", None), ("ifplug", "DEL", None)]


def test_exec_prefix_wraps_every_plugin(node: Node) -> None:
    node.conflist([{"type": "ifplug"}])
    node.runtime(exec_prefix=["env", "INMESH_TEST_PREFIXED=yes"]).add(INV)
    assert node.calls()[0]["env"]["INMESH_TEST_PREFIXED"] == "yes"


def test_invalid_invocation_is_refused(node: Node) -> None:
    node.conflist([{"type": "ifplug"}])
    with pytest.raises(ConfigError, match="invalid CNI invocation"):
        node.runtime().add(CniInvocation("../escape", "/ns"))
    assert node.calls() == []


# --- with the real inmesh-cni, installed the way a node gets it -------------------------------


@pytest.fixture
def meshed(node: Node, run_dir: str) -> Node:
    node.conflist([{"type": "ifplug", "add_ip": "10.4.0.7/24"}])
    install(str(node.conf), str(node.bin), run_dir, ["kube-system"])
    return node


def test_chain_with_inmesh_cni_tells_the_agent_the_pod_ips(meshed: Node, run_dir: str) -> None:
    with FakeAgent(os.path.join(run_dir, "pluginevent.sock")) as agent:
        result = meshed.runtime().add(INV)
        meshed.runtime().delete(INV)
    assert result["ips"] == [{"address": "10.4.0.7/24"}]
    assert agent.paths() == ["/cmdadd", "/cmddel"]
    assert agent.requests[0][1]["IPs"][0]["Address"] == {"IP": "10.4.0.7", "Mask": "////AA=="}


def test_chain_with_the_agent_down_fails_and_undoes_the_interface(meshed: Node) -> None:
    with pytest.raises(CniPluginError) as info:
        meshed.runtime().add(INV)
    assert (info.value.plugin, info.value.code) == ("inmesh-cni", 11)
    assert [(c["plugin"], c["command"]) for c in meshed.calls()] == [
        ("ifplug", "ADD"),
        ("ifplug", "DEL"),
    ]
