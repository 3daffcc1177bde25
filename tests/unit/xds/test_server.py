"""The grpc.aio ADS servicer against a hand-driven client over a real unix-socket channel."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from inmesh.xds.messages import DeltaRequest
from inmesh.xds.resources import ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL

from .helpers import (
    FakeSource,
    channel_to,
    eventually,
    raw_stream,
    run,
    serving,
    socket_path,
    workload,
)


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    with socket_path(tmp_path) as p:
        yield p


def _names(msg: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return [r.name for r in msg.resources]


def test_stream_gets_full_state_then_each_change(path: str) -> None:
    a, b = workload("a"), workload("b", b"\x0a\x00\x00\x02")

    async def body() -> list[tuple[list[str], list[str]]]:
        source = FakeSource(a)
        seen = []
        async with serving(path, source), raw_stream(path) as stream:
            for change in ((a, b), (b,)):
                msg = await stream.recv()
                seen.append((_names(msg), list(msg.removed_resources)))
                assert all(r.resource.type_url == ADDRESS_TYPE_URL for r in msg.resources)
                await stream.ack(msg)
                source.set(*change)
            msg = await stream.recv()
            seen.append((_names(msg), list(msg.removed_resources)))
        return seen

    assert run(body()) == [([a.name], []), ([b.name], []), ([], [a.name])]


def test_nack_is_logged_and_the_stream_keeps_serving(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> list[str]:
        source = FakeSource(workload("a"))
        async with serving(path, source), raw_stream(path) as stream:
            first = await stream.recv()
            await stream.send(
                DeltaRequest(ADDRESS_TYPE_URL, response_nonce=first.nonce, error="cannot use a")
            )
            source.set(workload("b"))
            second = await stream.recv()
            assert second.nonce != first.nonce
            return _names(second)

    with caplog.at_level(logging.WARNING, logger="inmesh.xds.server"):
        assert run(body()) == [workload("b").name]
    assert any("rejected" in r.message and "cannot use a" in r.message for r in caplog.records)


def test_nack_then_change_resends_what_the_client_lacks(path: str) -> None:
    """After a NACK the server assumes nothing of the response was applied."""

    async def body() -> list[str]:
        source = FakeSource(workload("a"))
        async with serving(path, source), raw_stream(path) as stream:
            first = await stream.recv()
            await stream.send(DeltaRequest(ADDRESS_TYPE_URL, response_nonce=first.nonce, error="x"))
            source.set(workload("a"), workload("b"))
            return _names(await stream.recv())

    assert run(body()) == [workload("a").name, workload("b").name]


def test_authorization_subscription_is_answered_empty(path: str) -> None:
    async def body() -> tuple[str, int]:
        async with serving(path, FakeSource(workload("a"))), raw_stream(path) as stream:
            await stream.recv()
            await stream.send(DeltaRequest(AUTHORIZATION_TYPE_URL))
            msg = await stream.recv()
            return msg.type_url, len(msg.resources)

    assert run(body()) == (AUTHORIZATION_TYPE_URL, 0)


def test_state_of_the_world_ads_is_unimplemented(path: str) -> None:
    async def body() -> grpc.StatusCode:
        async with serving(path, FakeSource()), channel_to(path) as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            await call.write(discovery_pb2.DiscoveryRequest(type_url=ADDRESS_TYPE_URL))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            return err.value.code()

    assert run(body()) == grpc.StatusCode.UNIMPLEMENTED


def test_bad_request_closes_only_its_own_stream(path: str) -> None:
    async def body() -> tuple[grpc.StatusCode, str, list[str]]:
        source = FakeSource(workload("a"))
        async with serving(path, source), raw_stream(path) as good, raw_stream(path) as bad:
            await bad.recv()
            await bad.call.write(discovery_pb2.DeltaDiscoveryRequest(response_nonce="1"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bad.call.read()
            await good.ack(await good.recv())
            source.set(workload("b"))
            return err.value.code(), err.value.details(), _names(await good.recv())

    code, details, names = run(body())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "type_url" in details
    assert names == [workload("b").name]


def test_active_streams_are_counted_and_a_half_close_ends_the_stream_ok(path: str) -> None:
    async def body() -> tuple[int, grpc.StatusCode, int]:
        async with serving(path, FakeSource()) as ads, raw_stream(path) as stream:
            await stream.recv()
            opened = ads.active_streams
            await stream.call.done_writing()
            assert await stream.call.read() is grpc.aio.EOF
            code = await stream.call.code()
            await eventually(lambda: ads.active_streams == 0)
            return opened, code, ads.active_streams

    assert run(body()) == (1, grpc.StatusCode.OK, 0)
