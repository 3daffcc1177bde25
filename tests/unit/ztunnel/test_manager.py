"""WorkloadManager state transitions, driven with a fake proxy factory (no sockets, no root)."""

from __future__ import annotations

import os

import pytest

from inmesh.errors import InmeshError, KernelError
from inmesh.netns import netns_id_of_fd
from inmesh.zds.messages import WorkloadInfo
from inmesh.ztunnel.manager import WorkloadManager, WorkloadState
from inmesh.ztunnel.metrics import ZtunnelMetrics
from tests.unit.ztunnel.fakes import INFO, FakeFactory, fd_source, is_open, run, wait_for

FAST_RETRY = 0.01


def ready_manager(factory: FakeFactory, **kw: object) -> WorkloadManager:
    m = WorkloadManager(factory, retry_interval=FAST_RETRY, **kw)  # type: ignore[arg-type]
    return m


async def _connect(m: WorkloadManager, keep: frozenset[str] = frozenset()) -> None:
    await m.snapshot_done(keep)
    m.connection_changed(True)


def test_add_starts_a_proxy_and_dump_shows_it() -> None:
    async def go() -> None:
        f = FakeFactory()
        m = ready_manager(f)
        with fd_source() as fds:
            fd = fds.fd("ns-a")
            ident = netns_id_of_fd(fd)
            await m.add_workload("uid-a", INFO, fd)
            assert m.state_of("uid-a") is WorkloadState.UP
            assert [p.uid for p in f.live()] == ["uid-a"]
            assert m.dump() == {"uid-a": {
                "info": {"name": "web-0", "namespace": "shop", "serviceAccount": "web"},
                "state": "Up", "netns": str(ident)}}
            await m.shutdown(None)
            assert not is_open(fd)
    run(go())


def test_add_with_same_netns_is_a_no_op_and_closes_the_new_fd() -> None:
    async def go() -> None:
        f = FakeFactory()
        m = ready_manager(f)
        with fd_source() as fds:
            first = fds.fd("ns-a")
            await m.add_workload("uid-a", INFO, first)
            again = fds.fd("ns-a")
            await m.add_workload("uid-a", INFO, again)
            assert not is_open(again)
            assert is_open(first)
            assert len(f.made) == 1
            assert m.state_of("uid-a") is WorkloadState.UP
            await m.shutdown(None)
    run(go())


def test_add_with_new_netns_drains_old_proxy_immediately_and_starts_new() -> None:
    async def go() -> None:
        f = FakeFactory()
        m = ready_manager(f)
        with fd_source() as fds:
            old_fd = fds.fd("ns-old")
            await m.add_workload("uid-a", INFO, old_fd)
            new_fd = fds.fd("ns-new")
            await m.add_workload("uid-a", INFO, new_fd)
            old, new = f.made
            assert old.drains == [None]
            assert new.started
            assert not new.drains
            assert not is_open(old_fd)
            assert m.dump()["uid-a"]["netns"] == str(netns_id_of_fd(new_fd))
            await m.shutdown(None)
    run(go())


def test_start_failure_nacks_stays_pending_and_retries_until_up() -> None:
    async def go() -> None:
        f = FakeFactory(failures=3)
        m = ready_manager(f)
        await _connect(m)
        with fd_source() as fds:
            with pytest.raises(InmeshError, match=r"failure to start proxy.*port 15001 in use"):
                await m.add_workload("uid-a", INFO, fds.fd("ns-a"))
            assert m.state_of("uid-a") is WorkloadState.PENDING
            assert m.readiness_blockers() == ["workload uid-a (shop/web-0)"]
            assert "port 15001 in use" in m.dump()["uid-a"]["error"]
            await wait_for(lambda: m.state_of("uid-a") is WorkloadState.UP)
            assert f.attempts == 4
            assert m.readiness_blockers() == []
            await m.shutdown(None)
    run(go())


def test_add_of_a_pending_workload_with_same_netns_tries_again_at_once() -> None:
    async def go() -> None:
        f = FakeFactory(failures=1)
        m = WorkloadManager(f, retry_interval=3600.0)
        with fd_source() as fds:
            with pytest.raises(InmeshError):
                await m.add_workload("uid-a", INFO, fds.fd("ns-a"))
            await m.add_workload("uid-a", INFO, fds.fd("ns-a"))
            assert m.state_of("uid-a") is WorkloadState.UP
            await m.shutdown(None)
    run(go())


def test_del_drains_immediately_and_closes_the_fd_unknown_uid_is_fine() -> None:
    async def go() -> None:
        f = FakeFactory()
        m = ready_manager(f)
        with fd_source() as fds:
            fd = fds.fd("ns-a")
            await m.add_workload("uid-a", INFO, fd)
            await m.del_workload("uid-a")
            await m.del_workload("uid-unknown")
            assert f.made[0].drains == [None]
            assert m.state_of("uid-a") is WorkloadState.GONE
            assert not is_open(fd)
            assert m.dump() == {}
    run(go())


def test_del_of_a_pending_workload_stops_its_retries() -> None:
    async def go() -> None:
        f = FakeFactory(failures=1000)
        m = ready_manager(f)
        with fd_source() as fds:
            fd = fds.fd("ns-a")
            with pytest.raises(InmeshError):
                await m.add_workload("uid-a", INFO, fd)
            await wait_for(lambda: f.attempts >= 2)
            await m.del_workload("uid-a")
            attempts = f.attempts
            await wait_for(lambda: m.retries_running == 0)
            assert f.attempts == attempts
            assert not is_open(fd)
            assert m.readiness_blockers() == ["zds connection"]
    run(go())


def test_snapshot_done_drains_what_is_not_kept() -> None:
    async def go() -> None:
        f = FakeFactory()
        m = ready_manager(f)
        with fd_source() as fds:
            for uid in ("a", "b", "c"):
                await m.add_workload(uid, WorkloadInfo(uid, "ns", "sa"), fds.fd(f"ns-{uid}"))
            await m.snapshot_done(frozenset({"a", "c", "not-here"}))
            assert sorted(m.dump()) == ["a", "c"]
            assert [p.uid for p in f.made if p.drains] == ["b"]
            await m.shutdown(None)
    run(go())


def test_readiness_needs_connection_and_snapshot_and_returns_on_reconnect() -> None:
    async def go() -> None:
        m = ready_manager(FakeFactory())
        assert m.readiness_blockers() == ["zds connection"]
        await m.snapshot_done(frozenset())
        m.connection_changed(True)
        assert m.readiness_blockers() == []
        m.connection_changed(False)
        assert m.readiness_blockers() == ["zds connection"]
        m.connection_changed(True)  # connected, but this connection's snapshot is not done
        assert m.readiness_blockers() == ["zds snapshot"]
        await m.snapshot_done(frozenset())
        assert m.readiness_blockers() == []
    run(go())


def test_shutdown_drains_gracefully_with_the_deadline_and_refuses_new_adds() -> None:
    async def go() -> None:
        f = FakeFactory()
        m = ready_manager(f)
        with fd_source() as fds:
            await m.add_workload("a", INFO, fds.fd("ns-a"))
            f.failures = 1000
            pending_fd = fds.fd("ns-b")
            with pytest.raises(InmeshError):
                await m.add_workload("b", INFO, pending_fd)
            await m.shutdown(123.5)
            assert f.made[0].drains == [123.5]
            assert not is_open(pending_fd)
            late = fds.fd("ns-c")
            with pytest.raises(InmeshError, match="shutting down"):
                await m.add_workload("c", INFO, late)
            assert not is_open(late)
            assert m.retries_running == 0
    run(go())


def test_bad_fd_is_a_kernel_error() -> None:
    async def go() -> None:
        m = ready_manager(FakeFactory())
        r, w = os.pipe()
        os.close(w)
        os.close(r)
        with pytest.raises(KernelError, match="bad netns fd"):
            await m.add_workload("a", INFO, r)
    run(go())


def test_gauges_and_counters_follow_the_states() -> None:
    async def go() -> None:
        metrics = ZtunnelMetrics()
        f = FakeFactory()
        m = ready_manager(f, metrics=metrics)
        reg = metrics.registry
        with fd_source() as fds:
            await m.add_workload("a", INFO, fds.fd("ns-a"))
            f.failures = 1000
            with pytest.raises(InmeshError):
                await m.add_workload("b", INFO, fds.fd("ns-b"))
            assert reg.get_sample_value("workload_manager_active_proxy_count") == 1
            assert reg.get_sample_value("workload_manager_pending_proxy_count") == 1
            await m.shutdown(None)
            assert reg.get_sample_value("workload_manager_active_proxy_count") == 0
            assert reg.get_sample_value("workload_manager_pending_proxy_count") == 0
            assert reg.get_sample_value("workload_manager_proxies_started_total") == 1
            assert reg.get_sample_value("workload_manager_proxies_stopped_total") == 1
    run(go())


def test_on_change_follows_the_set_of_workloads_and_infos_lists_them() -> None:
    """The mesh keeps its wanted certificates equal to `infos()` from this hook."""
    async def go() -> None:
        seen: list[dict[str, WorkloadInfo]] = []
        f = FakeFactory()
        m = WorkloadManager(f, retry_interval=FAST_RETRY,
                            on_change=lambda: seen.append(m.infos()))
        db = WorkloadInfo("db-0", "shop", "db")
        with fd_source() as fds:
            await m.add_workload("uid-a", INFO, fds.fd("ns-a"))
            f.failures = 1
            with pytest.raises(InmeshError):
                await m.add_workload("uid-b", db, fds.fd("ns-b"))  # pending counts too
            await m.del_workload("uid-a")
            await m.snapshot_done(frozenset())
            assert seen == [{"uid-a": INFO}, {"uid-a": INFO, "uid-b": db}, {"uid-b": db}, {}]
            await m.shutdown(None)
            assert seen[-1] == {}
    run(go())
