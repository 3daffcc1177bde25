"""Settings validate themselves: a bad flag fails at startup with the field's name."""

from __future__ import annotations

import dataclasses

import pytest

from inmesh.errors import ConfigError
from inmesh.ztunnel.addressing import HostPort
from inmesh.ztunnel.settings import MeshSettings, ProxySettings, ZtunnelSettings


def test_defaults_are_istios() -> None:
    s = ZtunnelSettings(node_name="n1", zds_socket="/run/z.sock")
    assert s.admin_addr == HostPort("127.0.0.1", 15000)
    assert s.metrics_addr == HostPort("0.0.0.0", 15020)
    assert s.readiness_addr == HostPort("0.0.0.0", 15021)
    assert s.drain_deadline == 5.0
    assert s.retry_interval == 5.0
    assert s.proxy.packet_mark == 0x539
    assert s.proxy.listen_backlog == 128
    assert s.proxy.connect_timeout == 10.0


def test_settings_are_frozen() -> None:
    s = ProxySettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.listen_backlog = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"listen_backlog": 0}, "listen_backlog"),
        ({"connect_timeout": 0.0}, "connect_timeout"),
        ({"keepalive_count": -1}, "keepalive_count"),
        ({"packet_mark": 0}, "packet_mark"),
        ({"pipe_size": 100}, "pipe_size"),
        ({"accept_batch": 0}, "accept_batch"),
    ],
)
def test_proxy_settings_reject_bad_values(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ProxySettings(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"node_name": ""}, "node_name"),
        ({"zds_socket": ""}, "zds_socket"),
        ({"drain_deadline": -1.0}, "drain_deadline"),
        ({"retry_interval": 0.0}, "retry_interval"),
        ({"http_max_head": 0}, "http_max_head"),
    ],
)
def test_ztunnel_settings_reject_bad_values(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"node_name": "n", "zds_socket": "/z"}
    with pytest.raises(ConfigError, match=field):
        ZtunnelSettings(**(base | kwargs))  # type: ignore[arg-type]


def test_zero_drain_deadline_is_allowed_and_addr_parses() -> None:
    s = ZtunnelSettings(node_name="n", zds_socket="/z", drain_deadline=0.0,
                        admin_addr=ZtunnelSettings.addr("[::1]:9000"))
    assert s.drain_deadline == 0.0
    assert s.admin_addr == HostPort("::1", 9000)


def test_mesh_settings_default_to_cluster_local_and_istio_hbone_bounds() -> None:
    m = MeshSettings(controlplane="unix:/run/cp.sock", node_credentials="/etc/cred")
    assert m.trust_domain == "cluster.local"
    assert m.hbone.stream_window == 4 << 20
    assert ZtunnelSettings(node_name="n", zds_socket="/z").mesh is None


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"controlplane": ""}, "controlplane"),
    ({"node_credentials": ""}, "node_credentials"),
    ({"trust_domain": "Not A Domain"}, "trust domain"),
])
def test_mesh_settings_reject_bad_values(kwargs: dict[str, str], field: str) -> None:
    args = {"controlplane": "cp:15012", "node_credentials": "/c"} | kwargs
    with pytest.raises(ConfigError, match=field):
        MeshSettings(**args)
