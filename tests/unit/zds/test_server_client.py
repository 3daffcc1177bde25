"""Peers in pairs: our ZDS server against our ZDS client over a real SOCK_SEQPACKET socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from inmesh.zds.server import SnapshotEntry, ZdsNacked, ZdsNotConnected, ZdsServer, ZdsTimeout

from .helpers import (
    GOLDEN_HELLO,
    INFO,
    SHORT,
    RawPeer,
    RecordingHandler,
    client_running,
    eventually,
    netns_fd,
    open_fds,
    own_netns,
    run,
    serving,
)


def snapshots_done(handler: RecordingHandler, n: int = 1) -> Callable[[], bool]:
    return lambda: handler.count("snapshot_done") >= n


async def _snapshot_add_del(path: str) -> RecordingHandler:
    handler = RecordingHandler()
    with netns_fd() as fd:
        snapshot = [SnapshotEntry("a", INFO, fd), SnapshotEntry("b", INFO, None)]
        async with serving(path, lambda: snapshot) as server, client_running(path, handler):
            await eventually(snapshots_done(handler))
            await server.add_workload("c", INFO, fd)
            await server.del_workload("a")
            assert server.connection_count == 1
    return handler


def _check_snapshot_add_del(handler: RecordingHandler) -> None:
    assert handler.calls == [
        ("add", "a", INFO, own_netns()),
        ("snapshot_done", frozenset({"a", "b"})),
        ("add", "c", INFO, own_netns()),
        ("del", "a"),
    ]
    assert set(handler.proxies) == {"c"}
    assert handler.changes == [True, False]


def test_snapshot_with_add_and_keep_then_add_and_del(tmp_path: Path) -> None:
    before = open_fds()
    _check_snapshot_add_del(run(_snapshot_add_del(str(tmp_path / "zds.sock"))))
    assert open_fds() <= before


def test_the_pair_also_works_on_uvloop(tmp_path: Path) -> None:
    """The agent and ztunnel processes run on uvloop; the shells must not rely on asyncio's loop."""
    coro: Coroutine[Any, Any, RecordingHandler] = asyncio.wait_for(
        _snapshot_add_del(str(tmp_path / "zds.sock")), 10
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        _check_snapshot_add_del(runner.run(coro))


def test_handler_error_reaches_the_agent_as_zds_nacked(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        handler = RecordingHandler()
        handler.fail.update({"a": "failure to start proxy : boom", "gone": "no such pod"})
        async with serving(path) as server, client_running(path, handler):
            await eventually(snapshots_done(handler))
            with netns_fd() as fd, pytest.raises(ZdsNacked) as caught:
                await server.add_workload("a", INFO, fd)
            assert caught.value.text == "failure to start proxy : boom"
            with pytest.raises(ZdsNacked, match="no such pod"):
                await server.del_workload("gone")
            assert server.connection_count == 1

    run(body())


def test_add_before_any_ztunnel_connects_is_not_connected(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        handler = RecordingHandler()
        async with serving(path) as server:
            with netns_fd() as fd, pytest.raises(ZdsNotConnected):
                await server.add_workload("a", INFO, fd)
            async with client_running(path, handler):
                await eventually(snapshots_done(handler))
                with netns_fd() as fd:
                    await server.add_workload("a", INFO, fd)
        assert handler.proxies == {"a": own_netns()}

    run(body())


def test_add_goes_to_the_newest_of_two_ztunnels_and_del_to_both(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        old, new = RecordingHandler(), RecordingHandler()
        async with serving(path) as server, client_running(path, old):
            await eventually(snapshots_done(old))
            async with client_running(path, new):
                await eventually(snapshots_done(new))
                assert server.connection_count == 2
                with netns_fd() as fd:
                    await server.add_workload("a", INFO, fd)
                assert (old.count("add"), new.count("add")) == (0, 1)
                await server.del_workload("a")
                assert (old.count("del"), new.count("del")) == (1, 1)
            await eventually(lambda: server.connection_count == 1)
            with netns_fd() as fd:
                await server.add_workload("b", INFO, fd)
            assert "b" in old.proxies

    run(body())


def test_client_reconnects_after_server_restart_and_drains_what_is_gone(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        handler = RecordingHandler()
        with netns_fd() as fd:
            pods = {"a": fd, "b": fd}
            snapshot = lambda: [SnapshotEntry(u, INFO, f) for u, f in pods.items()]  # noqa: E731
            async with client_running(path, handler):
                async with serving(path, snapshot):
                    await eventually(snapshots_done(handler))
                assert set(handler.proxies) == {"a", "b"}
                await eventually(lambda: handler.changes[-1:] == [False])
                del pods["a"]
                async with serving(path, snapshot) as server:
                    await eventually(snapshots_done(handler, 2))
                    assert handler.calls[-1] == ("snapshot_done", frozenset({"b"}))
                    assert set(handler.proxies) == {"b"}
                    assert handler.connected
                    assert server.connection_count == 1

    run(body())


def test_handler_that_never_answers_times_out_and_the_client_recovers(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        handler = RecordingHandler()
        handler.hang.add("slow")
        async with serving(path, settings=SHORT) as server, client_running(path, handler):
            await eventually(snapshots_done(handler))
            with netns_fd() as fd, pytest.raises(ZdsTimeout):
                await server.add_workload("slow", INFO, fd)
            assert server.connection_count == 0  # acks can no longer be matched: dropped
            handler.release()
            await eventually(snapshots_done(handler, 2))  # reconnected, fresh snapshot
            with netns_fd() as fd:
                await server.add_workload("fast", INFO, fd)
            assert "fast" in handler.proxies

    run(body())


def test_garbage_from_one_peer_leaves_the_real_ztunnel_working(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        handler = RecordingHandler()
        async with serving(path) as server, client_running(path, handler):
            await eventually(snapshots_done(handler))
            bad = await asyncio.to_thread(RawPeer.connect, path)
            try:
                await asyncio.to_thread(bad.send, GOLDEN_HELLO + b"\xff")
                assert await asyncio.to_thread(bad.recv) == (b"", [])
            finally:
                bad.close()
            await eventually(lambda: server.connection_count == 1)
            with netns_fd() as fd:
                await server.add_workload("a", INFO, fd)
            assert handler.proxies == {"a": own_netns()}

    run(body())


def test_server_close_while_client_connected_is_clean(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        handler = RecordingHandler()
        server = ZdsServer(path, list)
        await server.start()
        async with client_running(path, handler):
            await eventually(snapshots_done(handler))
            await server.close()
            await eventually(lambda: handler.changes == [True, False])
            assert server.connection_count == 0

    run(body())
