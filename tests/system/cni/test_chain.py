"""A real chain on a "node": Debian's bridge + host-local, then inmesh-cni, run by CniRuntime.

The node and the pod are network namespaces from netns_factory; plugins run inside the node netns
through nsenter (as containerd runs them on a host). The agent is the fake from the unit tier.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inmesh.cni.runtime import CniInvocation, CniPluginError, CniRuntime
from inmesh.netns import nsenter_argv
from tests.system.nshelpers import NetnsFactory, sh
from tests.unit.cni.fake_agent import FakeAgent

SYSTEM_PLUGINS = "/usr/lib/cni"
INMESH = os.path.join(os.path.dirname(sys.executable), "inmesh")
ARGS = {"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web-1", "K8S_POD_UID": "uid-web-1"}


@dataclass
class Node:
    name: str
    pod: str
    conf: Path
    bin: Path
    ipam: Path
    network: str
    subnet: ipaddress.IPv4Network
    run_dir: str
    runtime: CniRuntime

    @property
    def socket(self) -> str:
        return os.path.join(self.run_dir, "pluginevent.sock")

    def invocation(self, netns: str | None = None) -> CniInvocation:
        pod_path = NetnsFactory.path(self.pod)
        return CniInvocation(
            f"imt{secrets.token_hex(6)}", pod_path if netns is None else netns, "eth0", ARGS
        )

    def pod_addresses(self) -> list[str]:
        out = sh("ip", "-n", self.pod, "-j", "addr", "show").stdout
        return [
            a["local"]
            for link in json.loads(out)
            if link["ifname"] == "eth0"
            for a in link["addr_info"]
            if a["family"] == "inet"
        ]

    def node_veths(self) -> list[str]:
        out = sh("ip", "-n", self.name, "-j", "link", "show", "type", "veth").stdout
        return [link["ifname"] for link in json.loads(out or "[]")]

    def allocations(self) -> list[str]:
        """Addresses host-local holds (one file per address in its data dir)."""
        directory = self.ipam / self.network
        if not directory.exists():
            return []
        return [n for n in os.listdir(directory) if _is_ip(n)]


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@pytest.fixture
def node(netns_factory: NetnsFactory, tmp_path: Path) -> Iterator[Node]:
    if not os.path.exists(os.path.join(SYSTEM_PLUGINS, "bridge")):
        pytest.fail(
            f"Debian's CNI plugins are missing from {SYSTEM_PLUGINS} (apt install "
            "containernetworking-plugins)"
        )
    name, pod = netns_factory.create("node"), netns_factory.create("pod")
    tag = secrets.token_hex(3)
    subnet = ipaddress.IPv4Network(f"10.250.{secrets.randbelow(250) + 1}.0/24")
    conf, bin_, ipam = tmp_path / "net.d", tmp_path / "bin", tmp_path / "ipam"
    conf.mkdir()
    network = f"imt-{tag}"
    primary = {
        "cniVersion": "1.0.0",
        "name": network,
        "type": "bridge",
        "bridge": f"imb{tag}",
        "isGateway": True,
        "ipMasq": False,
        "ipam": {
            "type": "host-local",
            "subnet": str(subnet),
            "dataDir": str(ipam),
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    (conf / "10-bridge.conf").write_text(json.dumps(primary))
    run_dir = tempfile.mkdtemp(prefix="imcni-", dir="/tmp")
    runtime = CniRuntime(
        str(conf),
        [str(bin_), SYSTEM_PLUGINS],
        str(tmp_path / "cache"),
        exec_prefix=nsenter_argv(NetnsFactory.path(name)),
        timeout=30,
    )
    try:
        subprocess.run(
            [
                INMESH,
                "cni",
                "install",
                "--conf-dir",
                str(conf),
                "--bin-dir",
                str(bin_),
                "--agent-run-dir",
                run_dir,
                "--agent-timeout",
                "5",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield Node(name, pod, conf, bin_, ipam, network, subnet, run_dir, runtime)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_install_chained_inmesh_cni_after_the_bridge(node: Node) -> None:
    chain = json.loads((node.conf / "10-bridge.conflist").read_text())
    assert [p["type"] for p in chain["plugins"]] == ["bridge", "inmesh-cni"]
    assert not (node.conf / "10-bridge.conf").exists()


def test_add_gives_the_pod_an_address_and_the_agent_its_ips(node: Node) -> None:
    inv = node.invocation()
    with FakeAgent(node.socket) as agent:
        result = node.runtime.add(inv)
        [address] = node.pod_addresses()
        assert ipaddress.ip_address(address) in node.subnet
        assert [ip["address"].split("/")[0] for ip in result["ips"]] == [address]
        assert node.allocations() == [address]
        assert len(node.node_veths()) == 1

        [(path, body)] = agent.requests
        assert path == "/cmdadd"
        assert (body["PodName"], body["PodNamespace"], body["PodUID"]) == (
            "web-1",
            "shop",
            "uid-web-1",
        )
        assert body["Netns"] == NetnsFactory.path(node.pod)
        assert [ip["Address"] for ip in body["IPs"]] == [{"IP": address, "Mask": "////AA=="}]
        assert body["IPs"][0]["Gateway"] == str(node.subnet.network_address + 1)
        assert isinstance(body["IPs"][0]["Interface"], int)

        node.runtime.check(inv)
        node.runtime.delete(inv)
        assert agent.paths() == ["/cmdadd", "/cmdcheck", "/cmddel"]

    assert node.pod_addresses() == []
    assert node.node_veths() == []
    assert node.allocations() == []
    node.runtime.delete(CniInvocation(inv.container_id, "", "eth0", ARGS))


def test_second_del_with_empty_netns_succeeds_with_the_agent_down(node: Node) -> None:
    inv = node.invocation()
    with FakeAgent(node.socket):
        node.runtime.add(inv)
    node.runtime.delete(inv)
    node.runtime.delete(CniInvocation(inv.container_id, "", "eth0", ARGS))
    assert node.node_veths() == []
    assert node.allocations() == []


def test_add_with_the_agent_down_fails_and_leaves_nothing_behind(node: Node) -> None:
    with pytest.raises(CniPluginError) as info:
        node.runtime.add(node.invocation())
    assert (info.value.plugin, info.value.code) == ("inmesh-cni", 11)
    assert node.socket in info.value.msg
    assert node.pod_addresses() == []
    assert node.node_veths() == []
    assert node.allocations() == []


def test_uninstall_restores_the_original_conf(node: Node) -> None:
    subprocess.run(
        [INMESH, "cni", "uninstall", "--conf-dir", str(node.conf), "--bin-dir", str(node.bin)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert sorted(os.listdir(node.conf)) == ["10-bridge.conf"]
    assert os.listdir(node.bin) == []
    primary: dict[str, Any] = json.loads((node.conf / "10-bridge.conf").read_text())
    assert primary["type"] == "bridge"
