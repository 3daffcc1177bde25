"""The proxy's certificates: one `CertBundle` per workload identity on this node, fetched from
the CA with a fresh P-256 key each time, renewed at half-life (reference 8).

`CertManager` keeps a worker task per wanted identity. `get` answers at once from a valid cert,
waits for the fetch in flight (concurrent callers share it), or fails fast with the last error
while the worker backs off. A failed renewal keeps serving the still-valid cert. Identities no
longer wanted are forgotten with their keys: no key is held for an identity with no pod here.
Time comes from an injected `Clock`, so tests drive renewals without sleeping."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import grpc
from google.protobuf import struct_pb2

from inmesh.caapi import (
    CHANNEL_OPTIONS,
    CREATE_CERTIFICATE_PATH,
    IMPERSONATED_IDENTITY,
    ca_pb2,
)
from inmesh.errors import ConfigError, InmeshError
from inmesh.identity import SpiffeId
from inmesh.pki import CertBundle, NodeCredential, generate_key, make_csr, private_key_pem
from inmesh.ztunnel.errors import CaFetchError, CertUnavailable

log = logging.getLogger(__name__)

__all__ = [
    "CaClient",
    "CaFetchError",
    "CertManager",
    "CertSettings",
    "CertState",
    "CertUnavailable",
    "Clock",
    "GrpcCaClient",
    "SystemClock",
]


class CaClient(Protocol):
    async def fetch(self, csr_pem: bytes, identity: SpiffeId, ttl: int) -> list[str]:
        """The CA's ``cert_chain`` (leaf first, root set last) for ``csr_pem``; `CaFetchError`."""
        ...


class GrpcCaClient:
    """Istio's CreateCertificate over a grpc.aio mTLS channel, authenticated by the node
    credential in ``node_cred_dir``, asking for ``identity`` via ImpersonatedIdentity metadata."""

    def __init__(self, target: str, node_cred_dir: Path, *, timeout: float = 10.0) -> None:
        """``target``: ``host:port`` or ``unix:/path``. ``timeout``: seconds one request may take
        (Istio's ztunnel uses 10 s for CA calls). `ConfigError` if the credential dir is bad."""
        if timeout <= 0:
            raise ConfigError(f"CA client timeout must be positive, got {timeout}")
        cred = NodeCredential.load(node_cred_dir)
        self._creds = grpc.ssl_channel_credentials(
            root_certificates=cred.node_ca_pem,
            private_key=cred.key_pem,
            certificate_chain=cred.cert_pem,
        )
        self._target = target
        self._timeout = timeout
        self._channel: Any = None
        self._call: Any = None

    async def fetch(self, csr_pem: bytes, identity: SpiffeId, ttl: int) -> list[str]:
        metadata = struct_pb2.Struct()
        metadata.update({IMPERSONATED_IDENTITY: identity.uri})
        request = ca_pb2.IstioCertificateRequest(
            csr=csr_pem.decode(), validity_duration=ttl, metadata=metadata
        )
        try:
            response = await self._method()(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise CaFetchError(f"CA {self._target} did not issue {identity}: "
                               f"{exc.code().name}: {exc.details()}") from exc
        return list(response.cert_chain)

    async def __aenter__(self) -> GrpcCaClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._call = self._channel, None, None
            await channel.close()

    def _method(self) -> Any:
        if self._call is None:
            self._channel = grpc.aio.secure_channel(self._target, self._creds, CHANNEL_OPTIONS)
            self._call = self._channel.unary_unary(
                CREATE_CERTIFICATE_PATH,
                request_serializer=ca_pb2.IstioCertificateRequest.SerializeToString,
                response_deserializer=ca_pb2.IstioCertificateResponse.FromString,
            )
        return self._call


class Clock(Protocol):
    def now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC (certificate validity is wall-clock)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class CertSettings:
    requested_ttl: int = 86400
    """Validity in seconds asked of the CA (Istio's SECRET_TTL default: 24 h); the CA may clamp."""
    retry_initial: float = 1.0
    """Seconds before the first retry of a failed fetch; doubled per failure."""
    retry_max: float = 60.0
    """Longest back-off between retries, in seconds, so a recovered CA is used within a minute."""
    max_concurrent_fetches: int = 8
    """CSRs in flight at once; bounds the burst when a node with many pods starts."""
    recheck_interval: float = 60.0
    """Longest single sleep, in seconds, before re-reading the wall clock: renewal times are
    wall-clock and the loop's clock may not advance while the machine is suspended."""

    def __post_init__(self) -> None:
        for name in ("requested_ttl", "retry_initial", "retry_max", "max_concurrent_fetches",
                     "recheck_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"cert setting {name} must be positive: {getattr(self, name)}")
        if self.retry_max < self.retry_initial:
            raise ConfigError("cert setting retry_max must be >= retry_initial")


class CertState(enum.Enum):
    INITIALIZING = "initializing"
    """No certificate yet; the first fetch is in flight."""
    AVAILABLE = "available"
    RENEWING = "renewing"
    """A valid certificate is served while its renewal is in flight or being retried."""
    UNAVAILABLE = "unavailable"
    """No valid certificate and the last fetch failed; retrying with back-off."""


@dataclass(eq=False)
class _Entry:
    identity: SpiffeId
    bundle: CertBundle | None = None
    fetching: bool = False
    last_error: str | None = None
    waiters: list[asyncio.Future[CertBundle]] = field(default_factory=list)
    worker: asyncio.Task[None] | None = None

    def valid_bundle(self, now: datetime) -> CertBundle | None:
        return self.bundle if self.bundle is not None and not self.bundle.expired(now) else None

    def state(self, now: datetime) -> CertState:
        if self.valid_bundle(now) is None:
            failed = self.last_error is not None and not self.fetching
            return CertState.UNAVAILABLE if failed else CertState.INITIALIZING
        assert self.bundle is not None
        due = self.fetching or self.last_error is not None or now >= self.bundle.refresh_at()
        return CertState.RENEWING if due else CertState.AVAILABLE


class CertManager:
    """Certificates of this node's workload identities. Use as an async context manager (or
    call `aclose`): it owns one worker task per identity."""

    def __init__(
        self,
        client: CaClient,
        *,
        clock: Clock | None = None,
        settings: CertSettings | None = None,
    ) -> None:
        self._client = client
        self._clock: Clock = clock or SystemClock()
        self._settings = settings or CertSettings()
        self._entries: dict[SpiffeId, _Entry] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self._settings.max_concurrent_fetches)
        self._closed = False
        self._watchers: list[Callable[[SpiffeId, CertBundle | None], None]] = []

    def add_watcher(self, callback: Callable[[SpiffeId, CertBundle | None], None]) -> None:
        """Call ``callback(identity, bundle)`` whenever a certificate is issued or renewed,
        and ``callback(identity, None)`` when an identity (and its key) is forgotten."""
        self._watchers.append(callback)

    def bundles(self) -> list[CertBundle]:
        """The certificates held now that are still valid."""
        now = self._clock.now()
        return [b for e in self._entries.values() if (b := e.valid_bundle(now)) is not None]

    def _tell(self, identity: SpiffeId, bundle: CertBundle | None) -> None:
        for callback in self._watchers:
            try:
                callback(identity, bundle)
            except Exception:  # a watcher's bug must not stop certificate renewal
                log.exception("certificate watcher failed for %s", identity)

    async def __aenter__(self) -> CertManager:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def get(self, identity: SpiffeId) -> CertBundle:
        """A valid certificate for ``identity``; fetched now if there is none. Raises
        `CertUnavailable` when the fetch fails (or already failed and is being retried)."""
        entry = self._entries.get(identity) or self._start(identity)
        bundle = entry.valid_bundle(self._clock.now())
        if bundle is not None:
            return bundle
        if entry.last_error is not None and not entry.fetching:
            raise CertUnavailable(f"no certificate for {identity}: {entry.last_error}")
        waiter: asyncio.Future[CertBundle] = asyncio.get_running_loop().create_future()
        entry.waiters.append(waiter)
        try:
            return await waiter
        finally:
            if waiter in entry.waiters:
                entry.waiters.remove(waiter)

    def set_wanted(self, identities: Set[SpiffeId]) -> None:
        """The identities with a pod on this node: new ones are fetched in the background, the
        others are forgotten along with their keys (pending `get` calls fail)."""
        for identity in identities - self._entries.keys():
            self._start(identity)
        for identity in self._entries.keys() - identities:
            self._forget(identity, "no pod with this identity runs on this node any more")

    def dump(self) -> list[dict[str, Any]]:
        """Per identity: state, validity and the last error, for the admin config dump."""
        now = self._clock.now()
        out = []
        for identity, entry in sorted(self._entries.items()):
            b = entry.bundle
            out.append({
                "identity": identity.uri,
                "state": entry.state(now).value,
                "not_before": b.not_before.isoformat() if b else None,
                "not_after": b.not_after.isoformat() if b else None,
                "refresh_at": b.refresh_at().isoformat() if b else None,
                "last_error": entry.last_error,
            })
        return out

    async def aclose(self) -> None:
        """Forget every identity and wait for the workers to finish."""
        self._closed = True
        for identity in list(self._entries):
            self._forget(identity, "the certificate manager is shutting down")
        stopping = list(self._stopping)
        await asyncio.gather(*stopping, return_exceptions=True)
        self._stopping.difference_update(stopping)

    def _start(self, identity: SpiffeId) -> _Entry:
        if self._closed:
            raise CertUnavailable(f"no certificate for {identity}: shutting down")
        entry = _Entry(identity)
        entry.worker = asyncio.get_running_loop().create_task(
            self._run(entry), name=f"cert-worker {identity}"
        )
        entry.worker.add_done_callback(lambda task: self._worker_done(entry, task))
        self._entries[identity] = entry
        return entry

    def _worker_done(self, entry: _Entry, task: asyncio.Task[None]) -> None:
        """A worker only ends by cancellation; if a bug ends it, fail its callers and forget the
        entry so that the next `get` starts afresh."""
        if task.cancelled():
            return
        exc = task.exception()
        log.error("certificate worker for %s died", entry.identity, exc_info=exc)
        if self._entries.get(entry.identity) is entry:
            del self._entries[entry.identity]
        _settle(entry.waiters, CertUnavailable(
            f"no certificate for {entry.identity}: internal error {exc!r}"))

    def _forget(self, identity: SpiffeId, why: str) -> None:
        entry = self._entries.pop(identity)
        entry.bundle = None  # the key goes with it
        self._tell(identity, None)
        if entry.worker is not None:
            entry.worker.cancel()
            self._stopping.add(entry.worker)
            entry.worker.add_done_callback(self._stopping.discard)
        _settle(entry.waiters, CertUnavailable(f"no certificate for {identity}: {why}"))

    async def _run(self, entry: _Entry) -> None:
        failures = 0
        while True:
            if entry.bundle is not None:
                await self._sleep_until(entry.bundle.refresh_at())
            entry.fetching = True
            try:
                entry.bundle = await self._fetch(entry.identity)
            except Exception as exc:  # one identity's failure must not end its worker
                failures += 1
                entry.last_error = str(exc)
                if not isinstance(exc, InmeshError):
                    log.exception("unexpected error fetching a certificate for %s", entry.identity)
            else:
                failures, entry.last_error = 0, None
                self._tell(entry.identity, entry.bundle)
            finally:
                entry.fetching = False
            self._settle_waiters(entry)
            if failures:
                log.warning("certificate for %s: %s (retry %d)", entry.identity,
                            entry.last_error, failures)
                await self._clock.sleep(self._backoff(failures))

    async def _fetch(self, identity: SpiffeId) -> CertBundle:
        async with self._slots:
            key = generate_key()
            chain = await self._client.fetch(
                make_csr(key, identity), identity, self._settings.requested_ttl
            )
        try:
            now = self._clock.now()
            return CertBundle.from_response(identity, private_key_pem(key), chain, now)
        except InmeshError as exc:
            raise CaFetchError(f"unusable certificate from the CA for {identity}: {exc}") from exc

    def _settle_waiters(self, entry: _Entry) -> None:
        bundle = entry.valid_bundle(self._clock.now())
        if bundle is not None:
            _settle(entry.waiters, bundle)
        else:
            _settle(entry.waiters, CertUnavailable(
                f"no certificate for {entry.identity}: {entry.last_error}"))

    async def _sleep_until(self, when: datetime) -> None:
        while (remaining := (when - self._clock.now()).total_seconds()) > 0:
            await self._clock.sleep(min(remaining, self._settings.recheck_interval))

    def _backoff(self, failures: int) -> float:
        s = self._settings
        return min(s.retry_initial * 2.0 ** min(failures - 1, 32), s.retry_max)


def _settle(waiters: list[asyncio.Future[CertBundle]], outcome: CertBundle | Exception) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if isinstance(outcome, Exception):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
    waiters.clear()
