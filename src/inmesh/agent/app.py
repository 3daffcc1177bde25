"""The `inmesh agent` process: wires the source, rule backend, ZDS server and plugin API.

Start-up order (reference 3.1): restore and reconcile what the previous run enrolled, then open
the ZDS socket, then the plugin socket, then report ready. On SIGTERM the agent stops serving but
leaves every rule in place and the CNI plugin installed: new mesh pods then fail to start (fail
closed) until an agent is back, and running pods keep their redirection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from inmesh.agent.cniapi import CniApi
from inmesh.agent.httpapi import serve_unix
from inmesh.agent.reconcile import Reconciler
from inmesh.agent.service import PodRegistry
from inmesh.agent.settings import AgentSettings
from inmesh.agent.state import StateFile
from inmesh.cluster.model import PodSource
from inmesh.cluster.store import FileClusterStore
from inmesh.errors import InmeshError
from inmesh.redirect import RuleBackend, select_backend
from inmesh.zds.server import ZdsServer

log = logging.getLogger(__name__)


def other_backends(chosen: str) -> list[RuleBackend]:
    """The backends not in use, whose leftovers a restore sweeps (iptables <-> nftables switch)."""
    others = []
    for kind in ("iptables", "nftables"):
        if kind != chosen:
            try:
                others.append(select_backend(kind))
            except InmeshError as exc:
                log.info("not sweeping %s rules: %s", kind, exc)
    return others


async def serve(settings: AgentSettings, source: PodSource | None = None) -> None:
    source = source or FileClusterStore(settings.store)
    backend = select_backend(settings.backend)
    state = StateFile(settings.state_file)
    records = state.load()
    # the server asks for a snapshot only after start(), when `registry` is bound
    zds = ZdsServer(settings.zds_socket, lambda: registry.snapshot())
    registry = PodRegistry(
        backend, zds, state, other_backends(backend.name), annotate=source.annotate
    )
    reconciler = Reconciler(settings, source, registry)
    ready = False
    api = CniApi(settings, source, registry, reconciler, lambda: ready, backend.name)

    log.info("agent for node %s starting (backend %s, %d pods to restore)",
             settings.node, backend.name, len(records))
    await reconciler.restore(records)
    await zds.start()
    server = await serve_unix(settings.plugin_socket, api.handle)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tg:
            loop_task = tg.create_task(reconciler.run(), name="reconcile")
            ready = True
            log.info("agent ready: plugin socket %s, zds socket %s",
                     settings.plugin_socket, settings.zds_socket)
            await stop.wait()
            loop_task.cancel()
    finally:
        log.info("agent stopping; rules stay in place")
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        await zds.close()
        registry.close()


def run(settings: AgentSettings) -> None:
    # The default loop, not uvloop: the agent is not on the data path, and pyroute2 (used from
    # worker threads) needs asyncio's own loop for netlink sockets.
    asyncio.run(serve(settings))
