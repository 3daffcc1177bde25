"""`inmesh ztunnel` end to end, as a process in a node netns, fed by a real ZDS server: ready
after the snapshot, proxies pod traffic, hands over to a second ztunnel on SIGTERM without a
failed connection, drains on DelWorkload, and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from inmesh import netns
from inmesh.zds.messages import WorkloadInfo
from inmesh.zds.server import SnapshotEntry, ZdsServer
from tests.system.nshelpers import NetnsFactory
from tests.system.ztunnel.podlab import (
    EchoServer,
    SocketMaker,
    build_pod_lab,
    echo_roundtrip,
    listen_in,
    run,
    until_http,
    wait_for,
)

INFO = WorkloadInfo("app-0", "shop", "app")
INMESH = str(Path(sys.executable).with_name("inmesh"))


async def start_ztunnel(node_path: str, zds_path: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *netns.nsenter_argv(node_path), INMESH, "ztunnel", "--node", "node-1",
            "--zds-socket", zds_path, "--drain-deadline", "3", "--log-level", "debug",
            stdout=out, stderr=out)


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(15):
            return await proc.wait()
    except TimeoutError:
        proc.kill()
        return await proc.wait()


def test_ztunnel_process_serves_hands_over_and_drains(netns_factory: NetnsFactory,
                                                      tmp_path: Path) -> None:
    lab = build_pod_lab(netns_factory)
    node = netns_factory.create("n")
    zds_path = str(tmp_path / "ztunnel.sock")
    log = tmp_path / "ztunnel.log"

    async def go() -> None:
        loop = asyncio.get_running_loop()
        pod_fd = netns.open_netns(lab.pod_path)
        server = ZdsServer(zds_path, lambda: [SnapshotEntry("uid-1", INFO, pod_fd)])
        await server.start()
        echo = EchoServer(listen_in(lab.server_path, lab.server_ip, 9000))
        app, admin = SocketMaker(lab.pod_path), SocketMaker(netns_factory.path(node))
        procs: list[asyncio.subprocess.Process] = []
        try:
            procs.append(await start_ztunnel(netns_factory.path(node), zds_path, log))
            assert await until_http(admin, 15021, "/healthz/ready", 200) == b"ready\n"
            dump = json.loads(await until_http(admin, 15000, "/config_dump", 200))
            state = dump["workloadState"]["uid-1"]
            assert state["state"] == "Up"
            assert state["info"] == {"name": "app-0", "namespace": "shop",
                                     "serviceAccount": "app"}
            assert state["netns"] == str(netns.netns_id_of_fd(pod_fd))

            sock = await app.connect(lab.server_ip, 9000)
            assert await echo_roundtrip(sock, b"via ztunnel") == b"via ztunnel"
            metrics = (await until_http(admin, 15020, "/metrics", 200)).decode()
            assert 'istio_tcp_connections_opened_total{' in metrics
            assert 'source_workload="app-0"' in metrics
            assert echo.peers == [lab.pod_ip]

            # A second ztunnel on the same node: it gets the snapshot and binds the same pod
            # ports; the first gets SIGTERM while the app keeps connecting.
            procs.append(await start_ztunnel(netns_factory.path(node), zds_path, log))
            await wait_for(lambda: server.connection_count == 2)
            failures: list[str] = []
            done = 0

            async def client_loop(n: int) -> None:
                nonlocal done
                for i in range(n):
                    try:
                        s = await app.connect(lab.server_ip, 9000)
                        if await echo_roundtrip(s, b"%d" % i) != b"%d" % i:
                            failures.append(f"{i}: wrong echo")
                    except OSError as exc:
                        failures.append(f"{i}: {exc!r}")
                    done += 1

            await until_pod_bound_twice(lab.pod_path)
            clients = loop.create_task(client_loop(200))
            await wait_for(lambda: done >= 50)
            assert await stop(procs[0]) == 0
            await clients
            assert failures == []
            # The survivor takes the admin ports over once the first released them.
            assert await until_http(admin, 15021, "/healthz/ready", 200) == b"ready\n"
            assert procs[1].returncode is None

            # DelWorkload: the pod's proxy is drained, its traffic now fails closed.
            await server.del_workload("uid-1")
            dump = json.loads(await until_http(admin, 15000, "/config_dump", 200))
            assert dump["workloadState"] == {}
            try:
                s = await app.connect(lab.server_ip, 9000)
            except ConnectionRefusedError:
                pass
            else:
                s.close()
                raise AssertionError("connection bypassed the drained proxy")
            assert await stop(procs[1]) == 0
        finally:
            for proc in procs:
                await stop(proc)
            app.close()
            admin.close()
            await echo.close()
            await server.close()
            os.close(pod_fd)
            with contextlib.suppress(OSError):
                sys.stderr.write(log.read_text()[-4000:])
    run(go())


async def until_pod_bound_twice(pod_path: str) -> None:
    """Wait until two listeners share 15001 in the pod (both ztunnels serve it)."""
    from tests.system.nshelpers import sh

    def count() -> int:
        out = sh(*netns.nsenter_argv(pod_path), "ss", "-Htln", "sport = :15001").stdout
        return len(out.strip().splitlines())

    await wait_for(lambda: count() == 2)
