"""The ztunnel <-> inbound worker link: its messages (sans-io), the record channel with fd
passing over a real socketpair, the certificates a worker holds, and the table mirror."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

import pytest

from inmesh.errors import RemoteProtocolError
from inmesh.hbone import HboneSettings
from inmesh.identity import SpiffeId
from inmesh.pki import CertBundle
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel import worker as wk
from inmesh.ztunnel import workerproto as wp
from inmesh.ztunnel.channel import Channel
from inmesh.ztunnel.errors import CertUnavailable
from inmesh.ztunnel.metrics import TrafficLabels
from inmesh.ztunnel.settings import ProxySettings
from inmesh.ztunnel.workloads import WorkloadTable

from .fakes import run
from .test_workloads import body, uid

WEB = SpiffeId("cluster.local", "shop", "web")


def bundle(identity: SpiffeId = WEB, hours: float = 24.0) -> CertBundle:
    now = datetime.now(UTC).replace(microsecond=0)
    return CertBundle(identity=identity, key_pem=b"-----KEY-----\n\x00\xff",
                      chain_pem=(b"leaf\n", b"intermediate\n"), roots_pem=b"root\n",
                      not_before=now - timedelta(hours=1),
                      not_after=now + timedelta(hours=hours))


def test_certificates_keys_included_survive_the_trip() -> None:
    original = bundle()
    assert wp.bundle_of(wp.decode(wp.cert(original))) == original


def test_settings_travel_with_hello() -> None:
    proxy, hbone = ProxySettings(listen_backlog=7), HboneSettings(relay_chunk=12345)
    message = wp.decode(wp.hello("n1", "example.org", proxy, hbone, 20))
    assert wp.settings_of(message) == (proxy, hbone)
    assert (message["node"], message["trust_domain"], message["log_level"]) == (
        "n1", "example.org", 20)


def test_traffic_events_keep_every_label() -> None:
    labels = TrafficLabels(reporter="destination", source_workload="web",
                           connection_security_policy="mutual_tls", response_flags="CONNECT")
    events = [wp.event("closed", f"uid-{i}", labels, i, 20) for i in range(500)]
    records = wp.traffic(events)
    assert len(records) > 1  # split to fit
    got = [e for r in records for e in wp.decode(r)["events"]]
    assert got == events
    assert wp.labels_of(got[7]) == labels
    assert (got[7]["op"], got[7]["uid"], got[7]["received"], got[7]["sent"]) == (
        "closed", "uid-7", 7, 20)


def test_pod_info_survives() -> None:
    info = WorkloadInfo("web-0", "shop", "web")
    assert wp.info_of(wp.decode(wp.pod("u1", info))) == info


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[1, 2]", b'{"kind": "x"}', b"nul\x00l"])
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        wp.decode(data)


def test_big_xds_updates_are_split_and_give_the_same_table() -> None:
    added = {uid(f"w{i}"): body(f"w{i}", (f"10.1.{i // 250}.{i % 250 + 1}",), hbone=True)
             for i in range(600)}
    source = WorkloadTable()
    source.apply({uid("old"): body("old", ("10.9.9.9",))}, ())
    source.apply(added, [uid("old")])
    records = wp.xds_batches(source.resources(), [uid("old")])
    assert len(records) > 1
    assert all(len(r) <= wp.MAX_MESSAGE for r in records)
    mirror = WorkloadTable()
    mirror.apply({uid("old"): body("old", ("10.9.9.9",))}, ())
    for record in records:
        mirror.apply(*wp.xds_of(wp.decode(record)))
    assert mirror.resources() == source.resources()
    assert mirror.by_ip("10.9.9.9") is None
    assert mirror.by_ip("10.1.2.1") is not None


def test_the_table_tells_its_mirrors_and_keeps_what_it_applied() -> None:
    table = WorkloadTable()
    seen: list[tuple[dict[str, bytes], list[str]]] = []
    table.add_apply_listener(lambda added, removed: seen.append((dict(added), list(removed))))
    table.apply({uid("a"): body("a")}, ())
    table.apply({uid("b"): body("b", ("10.0.0.2",))}, [uid("a")])
    assert seen == [({uid("a"): body("a")}, []),
                    ({uid("b"): body("b", ("10.0.0.2",))}, [uid("a")])]
    assert table.resources() == {uid("b"): body("b", ("10.0.0.2",))}


def test_channel_carries_records_and_fds_in_order_even_when_the_socket_is_full() -> None:
    async def main() -> None:
        a, b = Channel.pair()
        left, right = Channel(a), Channel(b)
        r, w = os.pipe()
        try:
            payload = b"x" * 60_000
            for i in range(40):  # more than the socket buffer holds: the rest is queued
                left.send(wp.encode("n", i=i, p=payload.decode()), [w] if i == 3 else None)
            got = []
            for _ in range(40):
                data, fds = await right.recv()
                got.append(wp.decode(data)["i"])
                if fds:
                    assert got[-1] == 3
                    os.write(fds[0], b"hello")  # a working duplicate of the pipe's end
                    os.close(fds[0])
            assert got == list(range(40))
            assert os.read(r, 5) == b"hello"
            left.close()
            assert await right.recv() == (b"", [])
            right.close()
        finally:
            os.close(r)
            os.close(w)

    run(main())


def test_pushed_certs_wait_for_ztunnel_then_give_up() -> None:
    async def main() -> None:
        certs = wk.PushedCerts()
        waiting = asyncio.create_task(certs.get(WEB))
        await asyncio.sleep(0.01)
        certs.put(bundle())
        assert (await waiting).identity == WEB
        certs.drop(WEB)
        wk.CERT_WAIT = 0.05
        with pytest.raises(CertUnavailable):
            await certs.get(WEB)
        certs.put(bundle(hours=-0.5))  # expired: not served
        with pytest.raises(CertUnavailable):
            await certs.get(WEB)

    saved = wk.CERT_WAIT
    try:
        run(main())
    finally:
        wk.CERT_WAIT = saved


def test_a_removed_identity_leaves_no_key_in_the_worker() -> None:
    """ztunnel says an identity has no pod left: the worker drops its certificate and the TLS
    contexts built from its key, as ztunnel's own `Mesh.want` does."""

    async def main() -> None:
        a, b = Channel.pair()
        channel, other = Channel(a), Channel(b)
        try:
            worker = wk.Worker(channel, "n1", "cluster.local", ProxySettings(), HboneSettings())
            worker.certs.put(bundle())
            worker.mesh._contexts[("server", WEB)] = (bundle(), object())  # type: ignore[assignment]
            other_id = SpiffeId("cluster.local", "shop", "db")
            worker.mesh._contexts[("client", other_id)] = (bundle(other_id), object())  # type: ignore[assignment]
            assert worker._handle(wp.decode(wp.encode("uncert", identity=WEB.uri)), [])
            assert [i for _, i in worker.mesh._contexts] == [other_id]
            wk.CERT_WAIT = 0.01
            with pytest.raises(CertUnavailable):
                await worker.certs.get(WEB)
        finally:
            channel.close()
            other.close()

    saved = wk.CERT_WAIT
    try:
        run(main())
    finally:
        wk.CERT_WAIT = saved


def test_a_hung_worker_is_killed_and_replaced_and_ztunnel_serves_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real worker processes and a pod on loopback (its "netns" is the test's own): the
    worker stops answering pings (SIGSTOP); ztunnel takes 15008 back, kills it by pid and
    starts another, which gets the pod again."""
    import signal
    import socket

    from inmesh.ztunnel import offload
    from inmesh.ztunnel.metrics import ZtunnelMetrics

    monkeypatch.setattr(offload, "HEARTBEAT_INTERVAL", 0.05)
    monkeypatch.setattr(offload, "HEARTBEAT_TIMEOUT", 0.5)
    monkeypatch.setattr(offload, "RESTART_DELAY", 0.05)

    async def main() -> None:
        workers = offload.InboundWorkers(
            1, node="n1", trust_domain="cluster.local", proxy=ProxySettings(),
            hbone=HboneSettings(), metrics=ZtunnelMetrics(), resources=dict, certificates=list)
        local: list[bool] = []
        listener = socket.create_server(("127.0.0.1", 0))
        netns = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            workers.start()
            await _until(lambda: workers.ready_count == 1)
            first = next(iter(workers._workers.values())).process.pid
            workers.offer("u1", WorkloadInfo("a", "ns", "sa"), listener, netns, local.append)
            assert local == [False]  # handed to the ready worker
            os.kill(first, signal.SIGSTOP)
            await _until(lambda: local[-1:] == [True], 10.0)  # ztunnel serves it meanwhile
            await _until(lambda: workers.ready_count == 1, 10.0)
            second = next(iter(workers._workers.values())).process.pid
            assert second != first
            assert local[-1] is False  # the successor has the pod
        finally:
            await workers.close()
            listener.close()
            os.close(netns)

    run(main())


async def _until(predicate: object, within: float = 10.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
