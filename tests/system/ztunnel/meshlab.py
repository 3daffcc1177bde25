"""A small mesh for ztunnel's HBONE tests: a real control plane process, pods on one segment and
a real `inmesh ztunnel --controlplane` process fed by a real ZDS server.

Segment: netns G holds a bridge; every other netns has one veth port on it (10.252.X.0/24).
  P1 (client pod, node-1, in-pod rules)   P2 (server pod, node-1, in-pod rules)
  S  (plain server, not in the mesh)      X  (another "pod" whose 15008 the test serves itself)
The control plane's store lists P1 and P2 as redirected (HBONE), S as a plain workload and X as
HBONE pod ``shop/db`` on node-2. Everything lives in short /tmp paths and namespaces that the
fixtures remove.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from inmesh import netns
from inmesh.cluster.model import PodMeta
from inmesh.constants import ANNOTATION_REDIRECTION
from inmesh.zds.messages import WorkloadInfo
from inmesh.zds.server import SnapshotEntry, ZdsServer
from tests.system.cpharness import ControlPlane
from tests.system.nshelpers import NetnsFactory, sh
from tests.system.ztunnel.podlab import SocketMaker, install_inpod_rules, until_http

INMESH = str(Path(sys.executable).with_name("inmesh"))
CLIENT = WorkloadInfo("client-0", "shop", "client")
SERVER = WorkloadInfo("server-0", "shop", "server")
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/shop/sa/server"
DB_ID = "spiffe://cluster.local/ns/shop/sa/db"


@dataclass
class Segment:
    """The netns of the test: the switch G and the hosts on its bridge."""

    factory: NetnsFactory
    switch: str
    subnet: str
    hosts: dict[str, str] = field(default_factory=dict)
    """netns name -> its IP."""
    ports: dict[str, str] = field(default_factory=dict)
    """netns name -> its bridge port (a veth) inside G, for captures."""

    def path(self, name: str) -> str:
        return NetnsFactory.path(name)

    def attach(self, suffix: str, host: int) -> str:
        name = self.factory.create(suffix)
        port = f"imb{secrets.token_hex(3)}"
        sh("ip", "link", "add", port, "netns", self.switch, "type", "veth", "peer", "name",
           "eth0", "netns", name)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip = f"{self.subnet}.{host}"
        sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        self.hosts[name], self.ports[name] = ip, port
        return name


@dataclass
class MeshLab:
    segment: Segment
    node: str
    p1: str
    p2: str
    s: str
    x: str

    def ip(self, name: str) -> str:
        return self.segment.hosts[name]


def build_mesh_lab(factory: NetnsFactory) -> MeshLab:
    switch = factory.create("g")
    sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", switch, "link", "set", "br0", "up")
    seg = Segment(factory, switch, f"10.252.{secrets.randbelow(250) + 1}")
    p1, p2 = seg.attach("p1", 11), seg.attach("p2", 12)
    s, x = seg.attach("s", 13), seg.attach("x", 14)
    for pod in (p1, p2):
        install_inpod_rules(factory, pod)
    return MeshLab(seg, factory.create("n"), p1, p2, s, x)


def register_pods(plane: ControlPlane, lab: MeshLab) -> None:
    """The cluster store as the node agents would have left it."""
    enabled = {ANNOTATION_REDIRECTION: "enabled"}
    pods = [
        PodMeta("u1", CLIENT.name, "shop", "node-1", CLIENT.service_account,
                annotations=enabled, ips=(lab.ip(lab.p1),)),
        PodMeta("u2", SERVER.name, "shop", "node-1", SERVER.service_account,
                annotations=enabled, ips=(lab.ip(lab.p2),)),
        PodMeta("u3", "plain-0", "shop", "node-2", ips=(lab.ip(lab.s),)),
        PodMeta("u4", "db-0", "shop", "node-2", "db", annotations=enabled, ips=(lab.ip(lab.x),)),
    ]
    for pod in pods:
        plane.store.put_pod(pod)


@dataclass
class Ztunnel:
    proc: asyncio.subprocess.Process
    admin: SocketMaker
    log: Path
    zds: ZdsServer

    async def config_dump(self) -> dict[str, object]:
        import json
        return dict(json.loads(await until_http(self.admin, 15000, "/config_dump", 200)))

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        text = (await until_http(self.admin, 15020, "/metrics", 200)).decode()
        return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                   if s.name == name and labels.items() <= s.labels.items())

    async def until_metric(self, value: float, name: str, **labels: str) -> None:
        """Poll `metric` until it equals ``value`` (closing counts lag the client's EOF)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while (got := await self.metric(name, **labels)) != value:
            assert loop.time() < deadline, f"{name}{labels} = {got}, expected {value}"
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_ztunnel(lab: MeshLab, plane: ControlPlane,
                          ready: bool = True) -> AsyncIterator[Ztunnel]:
    """A ZDS server handing P1 and P2 over, and `inmesh ztunnel` in the node netns (ready,
    unless ``ready`` is False)."""
    zds_path = str(plane.root / "zds.sock")
    fds = [netns.open_netns(lab.segment.path(lab.p1)), netns.open_netns(lab.segment.path(lab.p2))]
    server = ZdsServer(zds_path, lambda: [SnapshotEntry("u1", CLIENT, fds[0]),
                                          SnapshotEntry("u2", SERVER, fds[1])])
    await server.start()
    admin = SocketMaker(lab.segment.path(lab.node))
    log = plane.root / "ztunnel.log"
    proc = None
    try:
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *netns.nsenter_argv(lab.segment.path(lab.node)), INMESH, "ztunnel",
                "--node", "node-1", "--zds-socket", zds_path, "--drain-deadline", "1",
                "--controlplane", plane.target, "--node-credentials",
                str(plane.credential("node-1")), "--log-level", "debug",
                stdout=out, stderr=out)
        zt = Ztunnel(proc, admin, log, server)
        if ready:
            assert await until_http(admin, 15021, "/healthz/ready", 200) == b"ready\n"
        yield zt
    finally:
        if proc is not None:
            await stop_process(proc)
        admin.close()
        await server.close()
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            sys.stderr.write(log.read_text()[-6000:])


async def stop_process(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(10):
            return await proc.wait()
    except TimeoutError:
        proc.kill()
        return await proc.wait()


class Capture:
    """``tcpdump -w`` on one bridge port inside G, from `start` to `stop`."""

    def __init__(self, lab: MeshLab, host: str, out: Path) -> None:
        self._argv = [*netns.nsenter_argv(lab.segment.path(lab.segment.switch)), "tcpdump",
                      "-i", lab.segment.ports[host], "--immediate-mode", "-U", "-n", "-s", "0", "-Z", "root",
                      "-w", str(out), "tcp"]
        self.out = out
        self._err = out.with_suffix(".err")
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._err.open("wb") as err:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv, stdout=asyncio.subprocess.DEVNULL, stderr=err)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while b"listening on" not in self._err.read_bytes():
            assert self._proc.returncode is None, self._err.read_text()
            assert loop.time() < deadline, "tcpdump did not start"
            await asyncio.sleep(0.02)

    async def wait_for(self, data: bytes) -> None:
        """Wait until ``data`` was written to the capture file (packets are written one by one)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while data not in self.out.read_bytes():
            assert loop.time() < deadline, f"{data!r} never captured"
            await asyncio.sleep(0.02)

    async def stop(self) -> bytes:
        """Stop the capture; the pcap file's bytes."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGINT)  # tcpdump flushes and exits
            try:
                async with asyncio.timeout(5):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        assert self.out.exists(), self._err.read_text()
        return self.out.read_bytes()

    def read(self, *bpf: str) -> list[str]:
        """The captured packets matching filter ``bpf``, one text line each."""
        out = sh("tcpdump", "-r", str(self.out), "-n", *bpf).stdout
        return out.splitlines()
