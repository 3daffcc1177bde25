"""Config files as values: the primary file a runtime picks, our entry chained last, taken out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inmesh.cni import conflist
from inmesh.cni.conflist import ConfigKind, parse_config_file
from inmesh.cni.event import plugin_entry
from inmesh.errors import ConfigError

ENTRY = plugin_entry("/var/run/inmesh", ("kube-system",), 15.0)
BRIDGE_CONF = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "type": "bridge",
    "bridge": "cni0",
    "ipam": {"type": "host-local", "subnet": "10.250.0.0/24"},
}
CHAIN = {
    "cniVersion": "0.4.0",
    "name": "k8s-pod-network",
    "plugins": [{"type": "calico"}, {"type": "portmap", "capabilities": {"portMappings": True}}],
}


def as_file(name: str, obj: dict[str, Any]) -> conflist.ConfigFile:
    return parse_config_file(name, json.dumps(obj).encode())


def test_primary_is_the_lexically_first_config_file() -> None:
    names = ["99-last.conflist", "10-calico.conflist", "05-bridge.conf", "README", "00.json.bak"]
    assert conflist.pick_primary(names) == "05-bridge.conf"
    assert conflist.pick_primary(["b.json", "c.conf"]) == "b.json"
    assert conflist.pick_primary(["notes.txt", ".inmesh-cni.install-record"]) is None


def test_single_plugin_conf_is_wrapped_keeping_name_and_version() -> None:
    cfg = as_file("10-bridge.conf", BRIDGE_CONF)
    assert cfg.kind is ConfigKind.SINGLE
    assert conflist.list_name(cfg) == "10-bridge.conflist"
    assert conflist.with_plugin(cfg, ENTRY) == {
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [
            {
                "name": "podnet",
                "type": "bridge",
                "bridge": "cni0",
                "ipam": {"type": "host-local", "subnet": "10.250.0.0/24"},
            },
            {
                "type": "inmesh-cni",
                "name": "inmesh-cni",
                "cni_agent_run_dir": "/var/run/inmesh",
                "exclude_namespaces": ["kube-system"],
                "agent_timeout_seconds": 15.0,
            },
        ],
    }


def test_entry_is_appended_last_to_a_list() -> None:
    cfg = as_file("10-calico.conflist", CHAIN)
    out = conflist.with_plugin(cfg, ENTRY)
    assert conflist.list_name(cfg) == "10-calico.conflist"
    assert out == {**CHAIN, "plugins": [*CHAIN["plugins"], ENTRY]}


def test_existing_entry_is_replaced_and_moved_last_not_duplicated() -> None:
    old = {"type": "inmesh-cni", "name": "inmesh-cni", "cni_agent_run_dir": "/old"}
    chain = {**CHAIN, "plugins": [CHAIN["plugins"][0], old, CHAIN["plugins"][1]]}
    out = conflist.with_plugin(as_file("x.conflist", chain), ENTRY)
    assert out["plugins"] == [*CHAIN["plugins"], ENTRY]


def test_render_is_deterministic_so_inserting_twice_gives_the_same_bytes() -> None:
    first = conflist.render(conflist.with_plugin(as_file("10-bridge.conf", BRIDGE_CONF), ENTRY))
    again = conflist.render(
        conflist.with_plugin(parse_config_file("10-bridge.conflist", first), ENTRY)
    )
    assert first == again
    assert first.endswith(b"}\n")


def test_without_plugin_takes_only_our_entry_out() -> None:
    chain = conflist.with_plugin(as_file("x.conflist", CHAIN), ENTRY)
    assert conflist.without_plugin(chain) == CHAIN
    assert conflist.has_plugin(as_file("x.conflist", chain))
    assert not conflist.has_plugin(as_file("x.conflist", CHAIN))


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("a.conf", b"{", "not valid JSON"),
        ("a.conf", b"[]", "not a JSON object"),
        ("a.conflist", b'{"name": "n"}', "no valid 'plugins'"),
        ("a.conflist", b'{"name": "n", "plugins": []}', "no plugins"),
        ("a.conflist", b'{"name": "n", "plugins": [1]}', "no valid 'plugins'"),
        ("a.conf", b'{"name": "n"}', "neither 'plugins' nor a plugin 'type'"),
    ],
)
def test_files_a_runtime_would_refuse_are_config_errors(name: str, data: bytes, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config_file(name, data)


def test_conf_file_holding_a_list_is_read_as_a_list() -> None:
    assert as_file("10-x.conf", CHAIN).kind is ConfigKind.LIST


def test_as_list_is_libcnis_conf_list_from_conf() -> None:
    assert conflist.as_list(as_file("10-bridge.conf", BRIDGE_CONF)) == {
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [BRIDGE_CONF],
    }


def test_invocation_config_injects_name_version_and_prev_result() -> None:
    chain = conflist.with_plugin(as_file("x.conflist", CHAIN), ENTRY)
    prev = {"cniVersion": "0.4.0", "ips": []}
    assert conflist.plugin_invocation_config(chain, 2, prev) == {
        **ENTRY,
        "name": "k8s-pod-network",
        "cniVersion": "0.4.0",
        "prevResult": prev,
    }
    first = conflist.plugin_invocation_config(chain, 0, None)
    assert first == {"type": "calico", "name": "k8s-pod-network", "cniVersion": "0.4.0"}
