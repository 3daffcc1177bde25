"""The proxy's certificate manager against a fake CA client and a fake clock (no sleeps), and
once against the real CA over mutual-TLS gRPC."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import uvloop

from inmesh.controlplane.ca import CaSettings, CertificateAuthority
from inmesh.errors import ConfigError
from inmesh.identity import SpiffeId
from inmesh.pki import (
    generate_key,
    load_certificate,
    load_certificates,
    load_private_key,
    make_csr,
    uri_sans,
    verify_chain,
)
from inmesh.ztunnel.certs import (
    CaFetchError,
    CertManager,
    CertSettings,
    CertUnavailable,
    GrpcCaClient,
)
from tests.unit.controlplane.caharness import run, running_ca
from tests.unit.pki.helpers import DB, T0, TD, WEB

TTL = 3600
SETTINGS = CertSettings(requested_ttl=TTL, retry_initial=1.0, retry_max=4.0)


class FakeClock:
    """Wall clock the test moves by hand; `sleep` returns when `advance` passes its deadline."""

    def __init__(self, now: datetime = T0) -> None:
        self.value = now
        self.sleeps: list[float] = []
        self._timers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self.value

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        timer = (self.value + timedelta(seconds=seconds), asyncio.get_running_loop().create_future())
        self._timers.append(timer)
        try:
            await timer[1]
        finally:
            self._timers.remove(timer)

    def advance(self, seconds: float) -> None:
        self.value += timedelta(seconds=seconds)
        for due, future in list(self._timers):
            if due <= self.value and not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        return sum(not f.done() for _, f in self._timers)


class FakeCaClient:
    """Signs with a real CA (on the fake clock); can fail, hold requests, or issue the wrong ID."""

    def __init__(self, tmp_path: Path, clock: FakeClock) -> None:
        self.ca = CertificateAuthority.load_or_create(
            tmp_path / "ca", TD, CaSettings(backdate=0), clock.now)
        self.calls: list[SpiffeId] = []
        self.failure: Exception | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.issue_as: SpiffeId | None = None

    async def fetch(self, csr_pem: bytes, identity: SpiffeId, ttl: int) -> list[str]:
        self.calls.append(identity)
        await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        return self.ca.sign(csr_pem, self.issue_as or identity, ttl)


EVENTUALLY_DEADLINE = 5.0
"""Real seconds `eventually` lets the workers run before the test fails."""


async def eventually(predicate: Callable[[], object], what: str) -> None:
    """Let the workers run until ``predicate`` holds (the fake clock does not move meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTUALLY_DEADLINE
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0)


def _world(tmp_path: Path, settings: CertSettings = SETTINGS) -> tuple[FakeClock, FakeCaClient, CertManager]:
    clock = FakeClock()
    client = FakeCaClient(tmp_path, clock)
    return clock, client, CertManager(client, clock=clock, settings=settings)


def test_get_fetches_once_then_serves_the_cached_cert(tmp_path: Path) -> None:
    async def body() -> None:
        clock, client, manager = _world(tmp_path)
        async with manager:
            bundle = await manager.get(WEB)
            assert await manager.get(WEB) is bundle
            assert client.calls == [WEB]
            leaf = load_certificate(bundle.chain_pem[0])
            assert uri_sans(leaf) == (WEB.uri,)
            assert load_private_key(bundle.key_pem).public_key() == leaf.public_key()
            assert (bundle.not_before, bundle.not_after) == (T0, T0 + timedelta(seconds=TTL))
            verify_chain(leaf, [], load_certificates(bundle.roots_pem), clock.now())
    run(body())


def test_concurrent_callers_share_one_fetch(tmp_path: Path) -> None:
    async def body() -> None:
        _, client, manager = _world(tmp_path)
        async with manager:
            client.gate.clear()
            waiting = [asyncio.ensure_future(manager.get(WEB)) for _ in range(5)]
            await eventually(lambda: client.calls, "the fetch")
            assert manager.dump()[0]["state"] == "initializing"
            client.gate.set()
            bundles = await asyncio.gather(*waiting)
            assert client.calls == [WEB]
            assert all(b is bundles[0] for b in bundles)
    run(body())


def test_renews_at_half_life_with_a_new_key(tmp_path: Path) -> None:
    async def body() -> None:
        clock, client, manager = _world(tmp_path)
        async with manager:
            first = await manager.get(WEB)
            assert first.refresh_at() == T0 + timedelta(seconds=TTL / 2)
            await eventually(lambda: clock.sleepers, "the worker to wait for the refresh time")
            clock.advance(TTL / 2 - 1)
            await eventually(lambda: clock.sleeps[-1] == 1, "the worker to wait the last second")
            assert client.calls == [WEB]
            clock.advance(1)
            await eventually(lambda: len(client.calls) == 2, "the renewal")
            await eventually(lambda: manager.dump()[0]["state"] == "available", "the new cert")
            second = await manager.get(WEB)
            assert second.not_after == clock.now() + timedelta(seconds=TTL)
            assert second.key_pem != first.key_pem
    run(body())


def test_failed_renewal_keeps_the_valid_cert_and_retries_with_back_off(tmp_path: Path) -> None:
    async def body() -> None:
        clock, client, manager = _world(tmp_path)
        async with manager:
            first = await manager.get(WEB)
            client.failure = CaFetchError("CA down")
            await eventually(lambda: clock.sleepers, "the worker to sleep")
            clock.advance(TTL / 2)
            await eventually(lambda: manager.dump()[0]["last_error"] == "CA down", "the failure")
            assert await manager.get(WEB) is first
            assert manager.dump()[0]["state"] == "renewing"
            await eventually(lambda: clock.sleeps[-1] == 1.0 and clock.sleepers, "the first back-off")
            clock.advance(1)
            await eventually(lambda: len(client.calls) == 3 and clock.sleeps[-1] == 2.0, "the second back-off")
            assert await manager.get(WEB) is first
            client.failure = None
            clock.advance(2)
            await eventually(lambda: manager.dump()[0]["state"] == "available", "the recovery")
            renewed = await manager.get(WEB)
            assert renewed is not first
            assert renewed.not_after == clock.now() + timedelta(seconds=TTL)
            assert manager.dump()[0]["last_error"] is None
    run(body())


def test_back_off_doubles_up_to_the_maximum(tmp_path: Path) -> None:
    async def body() -> None:
        clock, client, manager = _world(tmp_path)
        client.failure = CaFetchError("refused")
        async with manager:
            manager.set_wanted({WEB})
            for expected in (1.0, 2.0, 4.0, 4.0):
                await eventually(lambda: clock.sleepers, "a back-off sleep")
                assert clock.sleeps[-1] == expected
                clock.advance(expected)
            assert len(client.calls) >= 4
    run(body())


def test_a_failed_first_fetch_fails_get_and_fails_fast_until_a_retry_succeeds(tmp_path: Path) -> None:
    async def body() -> None:
        clock, client, manager = _world(tmp_path)
        client.failure = CaFetchError("CA down")
        async with manager:
            with pytest.raises(CertUnavailable, match=f"no certificate for {WEB}: CA down"):
                await manager.get(WEB)
            with pytest.raises(CertUnavailable, match="CA down"):
                await manager.get(WEB)
            assert client.calls == [WEB]  # the second get did not hammer the CA
            assert manager.dump()[0]["state"] == "unavailable"
            client.failure = None
            await eventually(lambda: clock.sleepers, "the back-off")
            clock.advance(1)
            await eventually(lambda: manager.dump()[0]["state"] == "available", "the retry")
            assert uri_sans(load_certificate((await manager.get(WEB)).chain_pem[0])) == (WEB.uri,)
    run(body())


def test_an_expired_cert_is_not_served(tmp_path: Path) -> None:
    async def body() -> None:
        clock, client, manager = _world(tmp_path)
        async with manager:
            await manager.get(WEB)
            client.failure = CaFetchError("CA down")
            await eventually(lambda: clock.sleepers, "the refresh wait")
            clock.advance(TTL)
            await eventually(lambda: len(client.calls) == 2 and clock.sleepers, "the failed renewal")
            assert manager.dump()[0]["state"] == "unavailable"
            with pytest.raises(CertUnavailable, match="CA down"):
                await manager.get(WEB)
    run(body())


def test_a_cert_for_another_identity_is_not_adopted(tmp_path: Path) -> None:
    async def body() -> None:
        _, client, manager = _world(tmp_path)
        client.issue_as = DB
        async with manager:
            with pytest.raises(CertUnavailable, match=r"unusable certificate.*not exactly"):
                await manager.get(WEB)
    run(body())


def test_an_unexpected_client_error_fails_the_fetch_not_the_worker(tmp_path: Path) -> None:
    async def body() -> None:
        clock, client, manager = _world(tmp_path)
        client.failure = RuntimeError("bug in the client")
        async with manager:
            with pytest.raises(CertUnavailable, match="bug in the client"):
                await manager.get(WEB)
            client.failure = None
            await eventually(lambda: clock.sleepers, "the back-off")
            clock.advance(1)
            await eventually(lambda: manager.dump()[0]["state"] == "available", "the retry")
    run(body())


def test_a_worker_that_dies_of_a_bug_fails_its_callers_and_is_restarted_by_the_next_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        _, client, manager = _world(tmp_path)
        async with manager:
            def broken(entry: object) -> None:
                raise RuntimeError("bug")

            monkeypatch.setattr(manager, "_settle_waiters", broken)
            with pytest.raises(CertUnavailable, match="internal error RuntimeError"):
                await manager.get(WEB)
            assert manager.dump() == []
            monkeypatch.undo()
            assert uri_sans(load_certificate((await manager.get(WEB)).chain_pem[0])) == (WEB.uri,)
            assert client.calls == [WEB, WEB]
    run(body())


def test_set_wanted_prefetches_in_the_background(tmp_path: Path) -> None:
    async def body() -> None:
        _, client, manager = _world(tmp_path)
        async with manager:
            manager.set_wanted({WEB, DB})
            await eventually(lambda: all(d["state"] == "available" for d in manager.dump()) and len(manager.dump()) == 2, "both certs")
            await manager.get(WEB)
            await manager.get(DB)
            assert sorted(client.calls) == [DB, WEB]
    run(body())


def test_identities_no_longer_wanted_are_forgotten_with_their_keys(tmp_path: Path) -> None:
    async def body() -> None:
        _, client, manager = _world(tmp_path)
        async with manager:
            manager.set_wanted({WEB, DB})
            bundle = await manager.get(DB)
            held = weakref.ref(bundle)
            old_key = bundle.key_pem
            del bundle
            client.gate.clear()
            pending = asyncio.ensure_future(manager.get(SpiffeId(TD, "shop", "cart")))
            await eventually(lambda: len(client.calls) == 3, "the cart fetch")
            manager.set_wanted({WEB})
            assert [d["identity"] for d in manager.dump()] == [WEB.uri]
            with pytest.raises(CertUnavailable, match="no pod with this identity runs on this node"):
                await pending
            await eventually(lambda: (gc.collect(), held() is None)[1], "the forgotten cert to be freed")
            client.gate.set()
            manager.set_wanted({WEB, DB})
            again = await manager.get(DB)
            assert again.key_pem != old_key
    run(body())


def test_dump_lists_identity_state_and_validity(tmp_path: Path) -> None:
    async def body() -> None:
        _, _, manager = _world(tmp_path)
        async with manager:
            await manager.get(WEB)
            assert manager.dump() == [{
                "identity": WEB.uri,
                "state": "available",
                "not_before": T0.isoformat(),
                "not_after": (T0 + timedelta(seconds=TTL)).isoformat(),
                "refresh_at": (T0 + timedelta(seconds=TTL / 2)).isoformat(),
                "last_error": None,
            }]
    run(body())


def test_aclose_stops_every_worker_and_refuses_new_work(tmp_path: Path) -> None:
    async def body() -> None:
        _, client, manager = _world(tmp_path)
        client.gate.clear()
        manager.set_wanted({WEB, DB})
        pending = asyncio.ensure_future(manager.get(WEB))
        await eventually(lambda: len(client.calls) == 2, "both fetches")
        await manager.aclose()
        with pytest.raises(CertUnavailable, match="shutting down"):
            await pending
        with pytest.raises(CertUnavailable, match="shutting down"):
            await manager.get(WEB)
        assert manager.dump() == []
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("cert-worker")] == []
    run(body())


@pytest.mark.parametrize(
    "kwargs",
    [{"requested_ttl": 0}, {"retry_initial": 0}, {"max_concurrent_fetches": 0},
     {"retry_initial": 5.0, "retry_max": 1.0}],
)
def test_settings_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="cert setting"):
        CertSettings(**kwargs)  # type: ignore[arg-type]


def test_grpc_client_needs_a_complete_node_credential_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node-key\.pem"):
        GrpcCaClient("127.0.0.1:1", tmp_path)


# --- against the real CA over mutual-TLS gRPC --------------------------------------------


def test_cert_manager_against_the_real_ca_service(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_ca(tmp_path) as world:
            world.add_pod("web-1", "worker-1")
            client = GrpcCaClient(world.target, world.node_dir("worker-1"))
            async with client, CertManager(client, settings=CertSettings(requested_ttl=TTL)) as manager:
                bundle = await manager.get(WEB)
                leaf = load_certificate(bundle.chain_pem[0])
                assert uri_sans(leaf) == (WEB.uri,)
                assert bundle.roots_pem == world.ca.root_pem
                assert (bundle.not_after - bundle.not_before).total_seconds() == TTL + world.ca.settings.backdate
                with pytest.raises(CertUnavailable, match="PERMISSION_DENIED: node 'worker-1' may not have"):
                    await manager.get(DB)
    run(body())


def test_grpc_client_on_uvloop_like_the_ztunnel_process(tmp_path: Path) -> None:
    async def body() -> list[str]:
        async with running_ca(tmp_path, unix=True) as world:
            world.add_pod("db-1", "worker-1", sa="db")
            async with GrpcCaClient(world.target, world.node_dir("worker-1")) as client:
                return await client.fetch(make_csr(generate_key(), DB), DB, TTL)

    chain = uvloop.run(asyncio.wait_for(body(), 20))
    assert uri_sans(load_certificate(chain[0])) == (DB.uri,)
