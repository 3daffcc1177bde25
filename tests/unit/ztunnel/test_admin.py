"""Admin endpoints: pure responses per surface, and the tiny HTTP servers over loopback
(including waiting for a port that a previous ztunnel still holds)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from inmesh.ztunnel.addressing import HostPort
from inmesh.ztunnel.admin import AdminServers, HttpResponse, Surface, respond
from inmesh.ztunnel.settings import ZtunnelSettings
from tests.unit.ztunnel.fakes import run, wait_for


class View:
    def __init__(self) -> None:
        self.blockers: list[str] = []

    def readiness_blockers(self) -> list[str]:
        return self.blockers

    def config_dump(self) -> dict[str, Any]:
        return {"workloadState": {"u1": {"info": {"name": "a", "namespace": "b",
                                                  "serviceAccount": "c"},
                                         "state": "Up", "netns": "netns:[1]@2"}}}

    def metrics(self) -> tuple[bytes, str]:
        return b"istio_tcp_connections_opened_total 1.0\n", "text/plain; version=0.0.4"


def get(surface: Surface, path: str, view: View | None = None) -> HttpResponse:
    return respond(surface, f"GET {path} HTTP/1.1".encode(), view or View())


def test_ready_is_200_with_body_ready() -> None:
    r = get(Surface.READINESS, "/healthz/ready")
    assert (r.status, r.body) == (200, b"ready\n")


def test_not_ready_is_500_listing_what_is_pending() -> None:
    view = View()
    view.blockers = ["zds snapshot", "workload u1 (ns/a)"]
    r = get(Surface.READINESS, "/healthz/ready", view)
    assert r.status == 500
    assert r.body == b"not ready, pending: zds snapshot, workload u1 (ns/a)\n"


def test_config_dump_is_json_with_workload_state() -> None:
    r = get(Surface.ADMIN, "/config_dump?include_eds")
    assert r.status == 200
    assert r.content_type == "application/json"
    assert json.loads(r.body)["workloadState"]["u1"]["state"] == "Up"


@pytest.mark.parametrize("path", ["/metrics", "/stats/prometheus"])
def test_metrics_paths_serve_prometheus_text(path: str) -> None:
    r = get(Surface.METRICS, path)
    assert r.status == 200
    assert r.body.startswith(b"istio_tcp_connections_opened_total")
    assert r.content_type.startswith("text/plain; version=0.0.4")


def test_paths_belong_to_their_surface_methods_are_get_only_garbage_is_400() -> None:
    assert get(Surface.READINESS, "/config_dump").status == 404
    assert get(Surface.ADMIN, "/metrics").status == 404
    assert respond(Surface.READINESS, b"POST /healthz/ready HTTP/1.1", View()).status == 405
    assert respond(Surface.ADMIN, b"\xff\xfe", View()).status == 400
    assert respond(Surface.ADMIN, b"GET / SPDY/3", View()).status == 400
    assert get(Surface.ADMIN, "/").status == 200


def test_response_encoding_has_length_and_closes() -> None:
    raw = HttpResponse(200, b"ready\n").encode()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 6\r\n" in raw
    assert b"Connection: close\r\n" in raw
    assert raw.endswith(b"\r\n\r\nready\n")


async def http_get(addr: HostPort, raw_request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(addr.host, addr.port)
    writer.write(raw_request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


def settings(**kw: Any) -> ZtunnelSettings:
    zero = HostPort("127.0.0.1", 0)
    base: dict[str, Any] = {"node_name": "n", "zds_socket": "/nonexistent",
                            "admin_addr": zero, "metrics_addr": zero, "readiness_addr": zero,
                            "admin_bind_retry": 0.01}
    return ZtunnelSettings(**(base | kw))


def test_servers_answer_over_http_and_reject_oversized_heads() -> None:
    async def go() -> None:
        servers = AdminServers(settings(http_max_head=256), View())
        servers.start()
        try:
            await wait_for(lambda: len(servers.bound) == 3)
            ready = await http_get(servers.bound[Surface.READINESS],
                                   b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ready.startswith(b"HTTP/1.1 200 OK")
            assert ready.endswith(b"ready\n")
            big = await http_get(servers.bound[Surface.ADMIN],
                                 b"GET / HTTP/1.1\r\nX: " + b"a" * 1000 + b"\r\n\r\n")
            assert big.startswith(b"HTTP/1.1 431")
        finally:
            await servers.close()
    run(go())


def test_a_taken_port_is_bound_once_the_previous_holder_lets_go() -> None:
    async def go() -> None:
        holder = socket.create_server(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        servers = AdminServers(settings(readiness_addr=HostPort("127.0.0.1", port)), View())
        servers.start()
        try:
            await wait_for(lambda: Surface.ADMIN in servers.bound and
                           Surface.METRICS in servers.bound)
            assert Surface.READINESS not in servers.bound
            holder.close()  # the old ztunnel starts draining and releases its admin ports
            await wait_for(lambda: Surface.READINESS in servers.bound)
            assert servers.bound[Surface.READINESS].port == port
        finally:
            holder.close()
            await servers.close()
    run(go())
