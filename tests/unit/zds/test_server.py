"""The agent's ZDS server against an independent raw ztunnel (plain socket calls, golden bytes)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import pytest

from inmesh.errors import ConfigError, LocalProtocolError
from inmesh.netns import netns_id_of_fd
from inmesh.zds.server import (
    SnapshotEntry,
    ZdsNacked,
    ZdsNotConnected,
    ZdsServer,
    ZdsServerSettings,
    ZdsTimeout,
)

from .helpers import (
    GOLDEN_HELLO,
    GOLDEN_OK,
    GOLDEN_SNAPSHOT_SENT,
    INFO,
    SHORT,
    RawPeer,
    eventually,
    hand_ack,
    hand_add_info,
    hand_del,
    hand_keep,
    netns_fd,
    open_fds,
    own_netns,
    run,
    serving,
)

to_thread = asyncio.to_thread


async def raw_ztunnel(path: str) -> RawPeer:
    """A raw ztunnel that has said Hello and acked an empty snapshot."""
    peer = await to_thread(RawPeer.connect, path)
    await to_thread(peer.send, GOLDEN_HELLO)
    assert await to_thread(peer.recv_no_fds) == GOLDEN_SNAPSHOT_SENT
    await to_thread(peer.send, GOLDEN_OK)
    return peer


async def recv_add(peer: RawPeer, uid: str) -> None:
    data, fds = await to_thread(peer.recv)
    try:
        assert data == hand_add_info(uid, INFO)
        assert len(fds) == 1
        assert netns_id_of_fd(fds[0]) == own_netns()
    finally:
        for fd in fds:
            os.close(fd)


async def assert_dropped(peer: RawPeer) -> None:
    assert await to_thread(peer.recv) == (b"", [])


def test_snapshot_then_add_and_del_in_golden_bytes(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        with netns_fd() as fd:
            snapshot = [SnapshotEntry("a", INFO, fd), SnapshotEntry("b", INFO, None)]
            async with serving(path, lambda: snapshot) as server:
                peer = await to_thread(RawPeer.connect, path)
                try:
                    await to_thread(peer.send, GOLDEN_HELLO)
                    await recv_add(peer, "a")
                    await to_thread(peer.send, GOLDEN_OK)
                    assert await to_thread(peer.recv_no_fds) == hand_keep("b")
                    await to_thread(peer.send, hand_ack("proxy failed"))  # NACK is only logged
                    assert await to_thread(peer.recv_no_fds) == GOLDEN_SNAPSHOT_SENT
                    await to_thread(peer.send, GOLDEN_OK)

                    add = asyncio.create_task(server.add_workload("c", INFO, fd))
                    await recv_add(peer, "c")
                    await to_thread(peer.send, GOLDEN_OK)
                    await add

                    delete = asyncio.create_task(server.del_workload("c"))
                    assert await to_thread(peer.recv_no_fds) == hand_del("c")
                    await to_thread(peer.send, GOLDEN_OK)
                    await delete
                    assert server.connection_count == 1
                finally:
                    peer.close()

    run(body())


def test_nack_raises_zds_nacked_with_the_text(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        async with serving(path) as server:
            peer = await raw_ztunnel(path)
            try:
                with netns_fd() as fd:
                    add = asyncio.create_task(server.add_workload("c", INFO, fd))
                    await recv_add(peer, "c")
                    await to_thread(peer.send, hand_ack("x"))
                    with pytest.raises(ZdsNacked) as info:
                        await add
                assert info.value.text == "x"
                delete = asyncio.create_task(server.del_workload("c"))
                assert await to_thread(peer.recv_no_fds) == hand_del("c")
                await to_thread(peer.send, hand_ack("no such pod"))
                with pytest.raises(ZdsNacked, match="no such pod"):
                    await delete
                assert server.connection_count == 1  # a NACK is an answer, not a failure
            finally:
                peer.close()

    run(body())


def test_without_connection_add_fails_and_del_succeeds(tmp_path: Path) -> None:
    async def body() -> None:
        async with serving(str(tmp_path / "zds.sock")) as server:
            assert server.connection_count == 0
            with netns_fd() as fd, pytest.raises(ZdsNotConnected, match="no ztunnel connection"):
                await server.add_workload("a", INFO, fd)
            await server.del_workload("a")

    run(body())


def test_add_goes_to_the_newest_connection_and_del_to_all(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        async with serving(path) as server:
            old = await raw_ztunnel(path)
            await eventually(lambda: server.connection_count == 1)
            new = await raw_ztunnel(path)
            await eventually(lambda: server.connection_count == 2)
            try:
                with netns_fd() as fd:
                    add = asyncio.create_task(server.add_workload("a", INFO, fd))
                    await recv_add(new, "a")
                    await to_thread(new.send, GOLDEN_OK)
                    await add
                delete = asyncio.create_task(server.del_workload("a"))
                for peer in (old, new):
                    assert await to_thread(peer.recv_no_fds) == hand_del("a")
                    await to_thread(peer.send, GOLDEN_OK)
                await delete
            finally:
                old.close()
                new.close()

    run(body())


def test_add_waits_behind_the_snapshot(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        with netns_fd() as fd:
            async with serving(path, lambda: [SnapshotEntry("a", INFO, fd)]) as server:
                peer = await to_thread(RawPeer.connect, path)
                try:
                    await to_thread(peer.send, GOLDEN_HELLO)
                    await recv_add(peer, "a")
                    add = asyncio.create_task(server.add_workload("b", INFO, fd))
                    await to_thread(peer.send, GOLDEN_OK)
                    assert await to_thread(peer.recv_no_fds) == GOLDEN_SNAPSHOT_SENT
                    await to_thread(peer.send, GOLDEN_OK)
                    await recv_add(peer, "b")
                    await to_thread(peer.send, GOLDEN_OK)
                    await add
                finally:
                    peer.close()

    run(body())


def test_each_connection_gets_a_fresh_snapshot(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        pods = ["a"]
        async with serving(path, lambda: [SnapshotEntry(u, INFO, None) for u in pods]):
            for expected in (["a"], ["a", "b"]):
                peer = await to_thread(RawPeer.connect, path)
                try:
                    await to_thread(peer.send, GOLDEN_HELLO)
                    for uid in expected:
                        assert await to_thread(peer.recv_no_fds) == hand_keep(uid)
                        await to_thread(peer.send, GOLDEN_OK)
                    assert await to_thread(peer.recv_no_fds) == GOLDEN_SNAPSHOT_SENT
                    await to_thread(peer.send, GOLDEN_OK)
                finally:
                    peer.close()
                pods.append("b")

    run(body())


def test_connections_are_accepted_at_most_accept_rate_per_second(tmp_path: Path) -> None:
    """Each connection costs a snapshot: a client that connects in a loop is paced (here 10
    per second: four at once take 0.3 s), and every one is still served."""

    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        async with serving(path, list, ZdsServerSettings(accept_rate=10.0)) as server:
            loop = asyncio.get_running_loop()
            start = loop.time()
            peers = await asyncio.gather(*(raw_ztunnel(path) for _ in range(4)))
            elapsed = loop.time() - start
            try:
                assert elapsed >= 0.27  # the 2nd, 3rd and 4th waited 100 ms each
                assert server.connection_count == 4
            finally:
                for peer in peers:
                    peer.close()

    run(body())


def test_a_non_positive_accept_rate_is_refused() -> None:
    with pytest.raises(ConfigError, match="accept_rate"):
        ZdsServerSettings(accept_rate=0)


async def _misbehave(peer: RawPeer, how: str) -> None:
    if how == "garbage-hello":
        await to_thread(peer.send, b"\xff\xff\xff")
        return
    await to_thread(peer.send, GOLDEN_HELLO)
    assert await to_thread(peer.recv_no_fds) == GOLDEN_SNAPSHOT_SENT
    if how == "truncated":
        await to_thread(peer.send, b"\x0a" * 2000)
    elif how == "garbage-ack":
        await to_thread(peer.send, b"\x0a\x05\x0a")
    elif how == "unsolicited-ack":
        await to_thread(peer.send, GOLDEN_OK)
        await to_thread(peer.send, GOLDEN_OK)
    elif how == "fd-from-ztunnel":
        with netns_fd() as fd:
            await to_thread(peer.send, GOLDEN_OK, [fd])


@pytest.mark.parametrize(
    "how", ["garbage-hello", "truncated", "garbage-ack", "unsolicited-ack", "fd-from-ztunnel"]
)
def test_misbehaving_ztunnel_is_dropped_while_another_keeps_working(tmp_path: Path, how: str) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        async with serving(path) as server:
            good = await raw_ztunnel(path)
            await eventually(lambda: server.connection_count == 1)
            bad = await to_thread(RawPeer.connect, path)
            try:
                await _misbehave(bad, how)
                await assert_dropped(bad)
                await eventually(lambda: server.connection_count == 1)
                with netns_fd() as fd:
                    add = asyncio.create_task(server.add_workload("a", INFO, fd))
                    await recv_add(good, "a")
                    await to_thread(good.send, GOLDEN_OK)
                    await add
            finally:
                good.close()
                bad.close()

    run(body())


def test_idle_connection_survives_keepalive_probes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="inmesh.zds._agentlink")

    def probes() -> int:
        return sum("keepalive probe" in r.getMessage() for r in caplog.records)

    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        async with serving(path, settings=SHORT) as server:
            peer = await raw_ztunnel(path)
            try:
                await eventually(lambda: probes() >= 3)
                assert server.connection_count == 1
                delete = asyncio.create_task(server.del_workload("a"))
                assert await to_thread(peer.recv_no_fds) == hand_del("a")
                await to_thread(peer.send, GOLDEN_OK)
                await delete
            finally:
                peer.close()

    run(body())


def test_bad_fd_from_the_caller_is_a_local_error(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        async with serving(path) as server:
            peer = await raw_ztunnel(path)
            try:
                await eventually(lambda: server.connection_count == 1)
                with pytest.raises(LocalProtocolError, match="netns fd"):
                    await server.add_workload("a", INFO, 1_000_000)
                assert server.connection_count == 1
            finally:
                peer.close()

    run(body())


def test_closed_peer_is_forgotten(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        async with serving(path, settings=SHORT) as server:
            peer = await raw_ztunnel(path)
            await eventually(lambda: server.connection_count == 1)
            peer.close()
            await eventually(lambda: server.connection_count == 0)
            with netns_fd() as fd, pytest.raises(ZdsNotConnected):
                await server.add_workload("a", INFO, fd)

    run(body())


def test_silent_ztunnel_is_dropped_after_the_hello_timeout(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        async with serving(path, settings=SHORT) as server:
            peer = await to_thread(RawPeer.connect, path)
            try:
                assert server.connection_count == 0  # no Hello: not a ztunnel, gets no Adds
                with netns_fd() as fd, pytest.raises(ZdsNotConnected):
                    await server.add_workload("a", INFO, fd)
                await assert_dropped(peer)
                assert server.connection_count == 0
            finally:
                peer.close()

    run(body())


def test_missing_ack_times_out_and_drops_the_connection(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        async with serving(path, settings=SHORT) as server:
            peer = await raw_ztunnel(path)
            try:
                with netns_fd() as fd:
                    add = asyncio.create_task(server.add_workload("a", INFO, fd))
                    await recv_add(peer, "a")
                    with pytest.raises(ZdsTimeout, match="no ack"):
                        await add
                await assert_dropped(peer)
                assert server.connection_count == 0
            finally:
                peer.close()

    run(body())


def test_full_queue_fails_at_once_and_cancelled_adds_are_never_sent(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        before = open_fds()
        async with serving(path) as server:
            peer = await raw_ztunnel(path)
            try:
                with netns_fd() as fd:
                    first = asyncio.create_task(server.add_workload("first", INFO, fd))
                    await recv_add(peer, "first")  # in flight, not acked yet
                    queued = [asyncio.create_task(server.add_workload(f"q{i}", INFO, fd))
                              for i in range(100)]
                    await asyncio.sleep(0)  # let every task queue its request
                    with pytest.raises(ZdsTimeout, match="100 requests waiting"):
                        await server.add_workload("overflow", INFO, fd)
                    for task in queued:
                        task.cancel()
                    await asyncio.wait(queued)
                await to_thread(peer.send, GOLDEN_OK)
                await first
                delete = asyncio.create_task(server.del_workload("z"))
                assert await to_thread(peer.recv_no_fds) == hand_del("z")  # no cancelled add
                await to_thread(peer.send, GOLDEN_OK)
                await delete
            finally:
                peer.close()
        assert open_fds() <= before

    run(body())


def test_snapshot_failure_drops_only_that_connection(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        calls: list[int] = []

        def snapshot() -> list[SnapshotEntry]:
            calls.append(1)
            if len(calls) == 1:
                raise KeyError("bug in the snapshot")
            return [SnapshotEntry("gone", INFO, 1_000_000)]  # unusable fd: sent as Keep

        async with serving(path, snapshot) as server:
            peer = await to_thread(RawPeer.connect, path)
            try:
                await to_thread(peer.send, GOLDEN_HELLO)
                await assert_dropped(peer)
            finally:
                peer.close()
            peer = await to_thread(RawPeer.connect, path)
            try:
                await to_thread(peer.send, GOLDEN_HELLO)
                assert await to_thread(peer.recv_no_fds) == hand_keep("gone")
                await to_thread(peer.send, GOLDEN_OK)
                assert await to_thread(peer.recv_no_fds) == GOLDEN_SNAPSHOT_SENT
                await to_thread(peer.send, GOLDEN_OK)
                assert server.connection_count == 1
            finally:
                peer.close()

    run(body())


def test_close_fails_waiting_requests_and_removes_the_socket(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        server = ZdsServer(path, list)
        await server.start()
        peer = await raw_ztunnel(path)
        try:
            with netns_fd() as fd:
                add = asyncio.create_task(server.add_workload("a", INFO, fd))
                await recv_add(peer, "a")
                await server.close()
                with pytest.raises(ZdsNotConnected):
                    await add
            await assert_dropped(peer)
        finally:
            peer.close()

    run(body())
    assert not (tmp_path / "zds.sock").exists()


def test_start_replaces_a_stale_socket_but_not_other_files(tmp_path: Path) -> None:
    async def body() -> None:
        stale = tmp_path / "stale.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as old:
            old.bind(str(stale))
        async with serving(str(stale)):
            peer = await raw_ztunnel(str(stale))
            peer.close()
        regular = tmp_path / "file"
        regular.write_text("not a socket")
        with pytest.raises(ConfigError, match="not a socket"):
            await ZdsServer(str(regular), list).start()
        assert regular.read_text() == "not a socket"

    run(body())
