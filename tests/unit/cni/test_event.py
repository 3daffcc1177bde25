"""What the plugin tells the agent: its config entry, which pods it asks about, Istio's event body."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inmesh.cni import event
from inmesh.cni.event import PluginConfig, PodRef
from inmesh.cni.spec import CniError, CniRequest, Command, NetConf

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/p"}],
    "ips": [
        {"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0},
        {"address": "fd00:1::3/64", "interface": 0},
        {"address": "192.168.7.9/32"},
    ],
}


def request(args: dict[str, str], prev: dict[str, Any] | None = PREV) -> CniRequest:
    conf = NetConf("1.0.0", "podnet", "inmesh-cni", MappingProxyType({}), prev)
    return CniRequest(
        Command.ADD,
        "1.0.0",
        container_id="c0ffee",
        netns="/var/run/netns/cni-7",
        ifname="eth0",
        args=MappingProxyType(args),
        config=conf,
    )


def test_plugin_config_defaults() -> None:
    cfg = PluginConfig.from_netconf({"type": "inmesh-cni"})
    assert cfg == PluginConfig("/var/run/inmesh", frozenset(), 15.0)
    assert cfg.socket_path == "/var/run/inmesh/pluginevent.sock"


def test_plugin_config_reads_our_keys() -> None:
    cfg = PluginConfig.from_netconf(
        {
            "cni_agent_run_dir": "/run/x/",
            "exclude_namespaces": ["kube-system"],
            "agent_timeout_seconds": 2,
        }
    )
    assert cfg == PluginConfig("/run/x/", frozenset({"kube-system"}), 2.0)
    assert cfg.socket_path == "/run/x/pluginevent.sock"


@pytest.mark.parametrize(
    "raw",
    [
        {"cni_agent_run_dir": ""},
        {"cni_agent_run_dir": 5},
        {"exclude_namespaces": "kube-system"},
        {"exclude_namespaces": [1]},
        {"agent_timeout_seconds": 0},
        {"agent_timeout_seconds": -1},
        {"agent_timeout_seconds": True},
        {"agent_timeout_seconds": "15"},
        {"agent_timeout_seconds": float("inf")},
        {"agent_timeout_seconds": 10_000},
    ],
)
def test_invalid_plugin_config_is_code_7(raw: dict[str, Any]) -> None:
    with pytest.raises(CniError) as info:
        PluginConfig.from_netconf(raw)
    assert info.value.code == 7


def test_plugin_entry_golden() -> None:
    assert event.plugin_entry("/run/inmesh", ("kube-system",), 5.0) == {
        "type": "inmesh-cni",
        "name": "inmesh-cni",
        "cni_agent_run_dir": "/run/inmesh",
        "exclude_namespaces": ["kube-system"],
        "agent_timeout_seconds": 5.0,
    }


def test_pod_of_reads_kubernetes_args() -> None:
    req = request({"K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "shop", "K8S_POD_UID": "u1"})
    assert event.pod_of(req) == PodRef("web", "shop", "u1")


def test_pod_without_namespace_is_in_default_and_uid_may_be_empty() -> None:
    assert event.pod_of(request({"K8S_POD_NAME": "web"})) == PodRef("web", "default", "")


def test_sandbox_without_pod_name_is_not_a_pod() -> None:
    req = request({"K8S_POD_NAMESPACE": "shop"})
    assert event.pod_of(req) is None
    assert "not a Kubernetes pod" in str(event.skip_reason(None, PluginConfig()))


def test_excluded_namespace_is_skipped_and_others_are_not() -> None:
    cfg = PluginConfig(exclude_namespaces=frozenset({"kube-system"}))
    assert event.skip_reason(PodRef("dns", "kube-system", ""), cfg) is not None
    assert event.skip_reason(PodRef("web", "shop", ""), cfg) is None


def test_event_body_is_istios_plus_extras() -> None:
    req = request({"K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "shop", "K8S_POD_UID": "u1"})
    body = event.event_body(req, PodRef("web", "shop", "u1"), with_ips=True)
    assert body == {
        "Netns": "/var/run/netns/cni-7",
        "PodName": "web",
        "PodNamespace": "shop",
        "PodUID": "u1",
        "ContainerID": "c0ffee",
        "IfName": "eth0",
        "IPs": [
            {
                "Interface": 0,
                "Address": {"IP": "10.1.2.3", "Mask": "////AA=="},
                "Gateway": "10.1.2.1",
            },
            {
                "Interface": 0,
                "Address": {"IP": "fd00:1::3", "Mask": "//////////8AAAAAAAAAAA=="},
                "Gateway": "",
            },
            {
                "Interface": None,
                "Address": {"IP": "192.168.7.9", "Mask": "/////w=="},
                "Gateway": "",
            },
        ],
    }
    json.dumps(body)


def test_del_body_has_no_ips() -> None:
    body = event.event_body(request({}), PodRef("web", "shop", ""), with_ips=False)
    assert "IPs" not in body
    assert body["PodNamespace"] == "shop"


def test_legacy_prev_result_addresses_are_read_too() -> None:
    legacy = {"cniVersion": "0.2.0", "ip4": {"ip": "10.9.0.4/16", "gateway": "10.9.0.1"}}
    assert event.event_ips(legacy) == [
        {
            "Interface": None,
            "Address": {"IP": "10.9.0.4", "Mask": "//8AAA=="},
            "Gateway": "10.9.0.1",
        }
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"ips": [{"address": "10.1.2.3"}]},
        {"ips": [{"address": "10.1.2.3/24", "interface": "0"}]},
        {"ips": [{"address": "10.1.2.3/24", "interface": True}]},
        {"ips": [{"address": "10.1.2.3/24", "gateway": 7}]},
        {"ips": {"address": "10.1.2.3/24"}},
    ],
)
def test_malformed_addresses_are_code_7(bad: dict[str, Any]) -> None:
    with pytest.raises(CniError) as info:
        event.event_ips(bad)
    assert info.value.code == 7


def test_reply_excerpt_is_bounded() -> None:
    text = event.reply_excerpt(b"x" * 10_000)
    assert len(text) < 5000
    assert text.endswith("(truncated)")
    assert event.reply_excerpt(b"no ztunnel\n") == "no ztunnel"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)


@given(
    st.dictionaries(st.sampled_from(["ips", "ip4", "ip6", "cniVersion"]), json_values)
    | st.fixed_dictionaries(
        {"ips": st.lists(st.dictionaries(st.sampled_from(["address", "interface"]), json_values))}
    )
)
def test_event_ips_raises_only_cni_error(result: dict[str, Any]) -> None:
    error: CniError | None = None
    try:
        ips = event.event_ips(result)
    except CniError as exc:
        error = exc
    if error is None:
        json.dumps(ips)
    else:
        assert error.code == 7
