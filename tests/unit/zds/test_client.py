"""ztunnel's ZDS client against an independent raw agent (plain socket calls, golden bytes)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from inmesh.errors import InmeshError
from inmesh.zds.messages import decode_ack

from .helpers import (
    GOLDEN_HELLO,
    GOLDEN_OK,
    GOLDEN_SNAPSHOT_SENT,
    INFO,
    RawAgent,
    RawPeer,
    RecordingHandler,
    client_running,
    eventually,
    field,
    hand_add,
    hand_add_info,
    hand_del,
    hand_keep,
    netns_fd,
    open_fds,
    own_netns,
    run,
)

to_thread = asyncio.to_thread


async def accept_hello(agent: RawAgent) -> RawPeer:
    peer = await to_thread(agent.accept)
    assert await to_thread(peer.recv_no_fds) == GOLDEN_HELLO
    return peer


async def request(peer: RawPeer, data: bytes, fds: list[int] | None = None) -> bytes:
    """Send one request as the agent would and return ztunnel's reply."""
    await to_thread(peer.send, data, fds or [])
    return await to_thread(peer.recv_no_fds)


async def snapshot_with_a(peer: RawPeer) -> None:
    with netns_fd() as fd:
        assert await request(peer, hand_add_info("a", INFO), [fd]) == GOLDEN_OK
    assert await request(peer, GOLDEN_SNAPSHOT_SENT) == GOLDEN_OK


def test_hello_snapshot_and_later_requests(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        agent, handler = RawAgent(path), RecordingHandler()
        try:
            async with client_running(path, handler):
                peer = await accept_hello(agent)
                try:
                    with netns_fd() as fd:
                        assert await request(peer, hand_add_info("a", INFO), [fd]) == GOLDEN_OK
                    assert await request(peer, hand_keep("b")) == GOLDEN_OK
                    assert await request(peer, hand_del("b")) == GOLDEN_OK
                    assert await request(peer, hand_keep("c")) == GOLDEN_OK
                    assert handler.changes == [True]
                    assert handler.count("snapshot_done") == 0
                    assert await request(peer, GOLDEN_SNAPSHOT_SENT) == GOLDEN_OK
                    with netns_fd() as fd:
                        assert await request(peer, hand_add_info("d", INFO), [fd]) == GOLDEN_OK
                    assert await request(peer, hand_del("a")) == GOLDEN_OK
                    assert handler.calls == [
                        ("add", "a", INFO, own_netns()),
                        ("del", "b"),
                        ("snapshot_done", frozenset({"a", "c"})),
                        ("add", "d", INFO, own_netns()),
                        ("del", "a"),
                    ]
                finally:
                    peer.close()
                await eventually(lambda: handler.changes[1:2] == [False])
        finally:
            agent.close()

    run(body())


def test_handler_error_is_nacked_with_its_text_and_the_connection_kept(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        agent, handler = RawAgent(path), RecordingHandler()
        handler.fail["a"] = "failure to start proxy : port 15008 in use"
        try:
            async with client_running(path, handler):
                peer = await accept_hello(agent)
                try:
                    with netns_fd() as fd:
                        reply = await request(peer, hand_add_info("a", INFO), [fd])
                    assert decode_ack(reply).error == "failure to start proxy : port 15008 in use"
                    assert await request(peer, GOLDEN_SNAPSHOT_SENT) == GOLDEN_OK
                    assert handler.calls[-1] == ("snapshot_done", frozenset({"a"}))
                finally:
                    peer.close()
        finally:
            agent.close()

    run(body())


def test_fd_that_is_not_a_netns_is_nacked_and_closed(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        before = open_fds()
        agent, handler = RawAgent(path), RecordingHandler()
        try:
            async with client_running(path, handler):
                peer = await accept_hello(agent)
                try:
                    read_end, write_end = os.pipe()
                    try:
                        reply = await request(peer, hand_add_info("a", INFO), [read_end])
                    finally:
                        os.close(read_end)
                        os.close(write_end)
                    assert "not a netns" in decode_ack(reply).error
                    assert handler.count("add") == 0
                    assert await request(peer, GOLDEN_SNAPSHOT_SENT) == GOLDEN_OK
                finally:
                    peer.close()
        finally:
            agent.close()
        assert open_fds() <= before

    run(body())


VIOLATIONS = {
    "keep-after-snapshot": (hand_keep("a"), 0, True),
    "second-snapshot": (GOLDEN_SNAPSHOT_SENT, 0, True),
    "add-without-info": (field(0x0A, field(0x0A, b"x")), 1, False),
    "add-without-fd": (hand_add("x", "web", "ns", "sa"), 0, False),
    "add-with-two-fds": (hand_add("x", "web", "ns", "sa"), 2, True),
    "del-with-fd": (hand_del("a"), 1, True),
    "snapshot-with-fd": (GOLDEN_SNAPSHOT_SENT, 1, False),
    "garbage": (b"\xff\xff\xff", 0, True),
    "unknown-payload": (b"\x22\x00", 0, True),
    "truncated": (b"\x12" * 1500, 0, True),
}


@pytest.mark.parametrize("name", VIOLATIONS)
def test_protocol_error_is_nacked_then_the_client_reconnects_keeping_proxies(
    tmp_path: Path, name: str
) -> None:
    """Istio's ztunnel exits(1) here; ours NACKs, drops the connection and reconnects, and
    touches no proxy: the next snapshot decides."""
    data, fd_count, after_snapshot = VIOLATIONS[name]

    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        before = open_fds()
        agent, handler = RawAgent(path), RecordingHandler()
        try:
            async with client_running(path, handler):
                peer = await accept_hello(agent)
                try:
                    if after_snapshot:
                        await snapshot_with_a(peer)
                    calls = list(handler.calls)
                    with netns_fd() as fd:
                        reply = await request(peer, data, [fd] * fd_count)
                    assert decode_ack(reply).error.startswith("protocol error: ")
                    assert await to_thread(peer.recv) == (b"", [])
                finally:
                    peer.close()
                again = await accept_hello(agent)
                again.close()
                assert handler.calls == calls
                assert handler.changes[:3] == [True, False, True]
        finally:
            agent.close()
        assert open_fds() <= before

    run(body())


def test_agent_restart_brings_a_fresh_snapshot_that_drains_the_rest(tmp_path: Path) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        agent, handler = RawAgent(path), RecordingHandler()
        try:
            async with client_running(path, handler):
                peer = await accept_hello(agent)
                await snapshot_with_a(peer)
                peer.close()
                agent.close()
                os.unlink(path)
                await eventually(lambda: handler.changes[-1:] == [False])
                agent = RawAgent(path)
                peer = await accept_hello(agent)
                try:
                    assert await request(peer, hand_keep("other")) == GOLDEN_OK
                    assert await request(peer, GOLDEN_SNAPSHOT_SENT) == GOLDEN_OK
                finally:
                    peer.close()
                assert handler.calls[-1] == ("snapshot_done", frozenset({"other"}))
                assert handler.proxies == {}
        finally:
            agent.close()

    run(body())


def test_client_keeps_retrying_until_the_agent_listens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inmesh.zds.client")

    def failed_connects() -> int:
        return sum("connect to" in r.getMessage() for r in caplog.records)

    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        handler = RecordingHandler()
        async with client_running(path, handler) as task:
            await eventually(lambda: failed_connects() >= 3)
            assert not task.done()
            assert handler.changes == []
            agent = RawAgent(path)
            try:
                peer = await accept_hello(agent)
                peer.close()
            finally:
                agent.close()
        assert handler.changes[0] is True

    run(body())


class _FailingHandler(RecordingHandler):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    async def snapshot_done(self, keep: frozenset[str]) -> None:
        await super().snapshot_done(keep)
        raise self.error


@pytest.mark.parametrize(
    ("error", "text"),
    [(InmeshError("drain failed"), "drain failed"), (ZeroDivisionError("bug"), "internal error")],
)
def test_failed_snapshot_reconcile_is_nacked_and_retried_on_a_new_connection(
    tmp_path: Path, error: BaseException, text: str
) -> None:
    async def body() -> None:
        path = str(tmp_path / "zds.sock")
        agent, handler = RawAgent(path), _FailingHandler(error)
        try:
            async with client_running(path, handler):
                peer = await accept_hello(agent)
                try:
                    reply = await request(peer, GOLDEN_SNAPSHOT_SENT)
                    assert text in decode_ack(reply).error
                    assert await to_thread(peer.recv) == (b"", [])
                finally:
                    peer.close()
                again = await accept_hello(agent)
                again.close()
        finally:
            agent.close()

    run(body())
