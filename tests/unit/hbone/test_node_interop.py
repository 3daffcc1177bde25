"""Against an independent implementation: Node.js's http2 module (nghttp2 + OpenSSL) as the HBONE
client of our server, and as the HBONE server of our client pool, both with TLS 1.3 mTLS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

from inmesh.hbone import PoolKey, forwarded

from .certs import Credential
from .helpers import (
    CLIENT_ID,
    LOCAL_IP,
    SERVER_ID,
    Pki,
    Target,
    eventually,
    plain_socket,
    pool,
    read_stream,
    rig,
    run,
)

NODE = shutil.which("node") or "node"  # v20 is on the test machines

CLIENT_JS = r"""
const http2 = require('node:http2');
const crypto = require('node:crypto');
const cfg = JSON.parse(process.argv[1]);
const client = http2.connect(cfg.url, {
  ca: cfg.ca, cert: cfg.cert, key: cfg.key,
  minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3',
  checkServerIdentity: () => undefined,  // identity is the SPIFFE SAN, checked below
});
client.on('error', (e) => { console.log(JSON.stringify({error: e.message})); process.exit(2); });
function tunnel(authority, size) {
  return new Promise((resolve) => {
    const req = client.request({':method': 'CONNECT', ':authority': authority});
    const hash = crypto.createHash('sha256');
    let status = null, length = 0;
    req.on('response', (h) => {
      status = h[':status'];
      if (status === 200) req.end(Buffer.alloc(size, 'n'));
    });
    req.on('data', (c) => { hash.update(c); length += c.length; });
    req.on('error', () => {});
    req.on('close', () => resolve({authority, status, length, sha256: hash.digest('hex'),
                                   rst: req.rstCode}));
  });
}
client.on('connect', async () => {
  const sock = client.socket;
  const out = {alpn: client.alpnProtocol, tls: sock.getProtocol(),
               peer: sock.getPeerCertificate().subjectaltname, results: []};
  for (const [authority, size] of cfg.tunnels) out.results.push(await tunnel(authority, size));
  console.log(JSON.stringify(out));
  client.close();
});
"""

SERVER_JS = r"""
const http2 = require('node:http2');
const cfg = JSON.parse(process.argv[1]);
const server = http2.createSecureServer({
  ca: cfg.ca, cert: cfg.cert, key: cfg.key, requestCert: true, rejectUnauthorized: true,
  minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3',
});
server.on('secureConnection', (sock) => {
  console.log(JSON.stringify({peer: sock.getPeerCertificate().subjectaltname,
                              sni: sock.servername || null}));
});
server.on('stream', (stream, headers) => {
  if (headers[':method'] !== 'CONNECT') { stream.respond({':status': 400}, {endStream: true}); return; }
  console.log(JSON.stringify({authority: headers[':authority'], forwarded: headers['forwarded'] || null}));
  stream.respond({':status': 200});
  stream.pipe(stream);  // echo, with nghttp2's own flow control and backpressure
});
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({port: server.address().port})));
"""


def _creds(cred: Credential) -> dict[str, str]:
    return {"cert": cred.chain_pem.decode(), "key": cred.key_pem.decode(),
            "ca": cred.roots_pem.decode()}


def test_node_client_tunnels_through_our_server(pki: Pki) -> None:
    size = 3 << 20

    async def go() -> dict[str, Any]:
        async with rig(pki) as r:
            cfg = {"url": f"https://{r.hbone}", **_creds(pki.client),
                   "tunnels": [[str(r.app), size], ["127.0.0.9:80", 1],
                               [f"{LOCAL_IP}:15008", 1], [str(r.app), 10]]}
            proc = await asyncio.create_subprocess_exec(
                NODE, "-e", CLIENT_JS, json.dumps(cfg), stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out
            assert [q.peer_identity for q in r.requests] == [CLIENT_ID, CLIENT_ID]
            return json.loads(out)

    report = run(go())
    assert (report["alpn"], report["tls"]) == ("h2", "TLSv1.3")
    assert report["peer"] == f"URI:{SERVER_ID.uri}, DNS:db.shop.svc"
    big, other_ip, proxy_port, small = report["results"]
    assert (big["status"], big["length"]) == (200, size)
    assert big["sha256"] == hashlib.sha256(b"n" * size).hexdigest()
    assert (other_ip["status"], proxy_port["status"]) == (400, 400)
    assert (small["status"], small["length"]) == (200, 10)  # same connection, still fine


@contextlib.asynccontextmanager
async def node_server(pki: Pki) -> AsyncIterator[tuple[Target, asyncio.subprocess.Process]]:
    cfg = _creds(pki.server)
    proc = await asyncio.create_subprocess_exec(
        NODE, "-e", SERVER_JS, json.dumps(cfg), stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        port = json.loads(await proc.stdout.readline())["port"]
        yield Target(LOCAL_IP, port), proc
    finally:
        proc.terminate()
        await proc.wait()


def test_our_client_pool_tunnels_through_a_node_server(pki: Pki) -> None:
    payload = os.urandom(6 << 20)

    async def go() -> list[dict[str, Any]]:
        async with node_server(pki) as (target, proc), pool() as p:
            key = PoolKey(CLIENT_ID, SERVER_ID, LOCAL_IP, target)
            streams = []
            for _ in range(2):
                stream = await p.open(key, plain_socket, pki.client_ctx(), [SERVER_ID],
                                      Target("10.0.0.5", 8080),
                                      [forwarded(Target("10.0.0.4", 5555))])
                streams.append(stream)
            assert streams[0].peer_identity == SERVER_ID

            async def send(stream: Any) -> None:
                await stream.write(payload)
                stream.close_write()

            results = await asyncio.gather(*(asyncio.gather(send(s), read_stream(s))
                                             for s in streams))
            for _, echoed in results:
                assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
            assert p.dials == 1
            assert proc.stdout is not None
            return [json.loads(await proc.stdout.readline()) for _ in range(3)]

    session, first, second = run(go())
    assert session == {"peer": f"URI:{CLIENT_ID.uri}", "sni": None}
    assert first == second == {"authority": "10.0.0.5:8080", "forwarded": 'for="10.0.0.4:5555"'}


GOAWAY_SERVER_JS = r"""
const http2 = require('node:http2');
const cfg = JSON.parse(process.argv[1]);
const server = http2.createSecureServer({
  ca: cfg.ca, cert: cfg.cert, key: cfg.key, requestCert: true, rejectUnauthorized: true,
  minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3',
});
let sessions = 0;
server.on('session', () => { sessions += 1; });
server.on('stream', (stream, headers) => {
  stream.respond({':status': 200});
  stream.pipe(stream);
  if (sessions === 1) {  // the first connection drains: GOAWAY(NO_ERROR), its stream lives on
    stream.session.goaway(http2.constants.NGHTTP2_NO_ERROR, stream.id);
  }
  console.log(JSON.stringify({session: sessions, stream: stream.id}));
});
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({port: server.address().port})));
"""


def test_a_node_server_that_drains_keeps_our_tunnel_and_gets_the_next_one_anew(
        pki: Pki) -> None:
    """nghttp2 sends a graceful GOAWAY after accepting our first CONNECT: that tunnel keeps
    working both ways, and the pool opens the next tunnel on a new connection."""
    payload = os.urandom(1 << 20)

    async def go() -> list[dict[str, Any]]:
        cfg = _creds(pki.server)
        proc = await asyncio.create_subprocess_exec(
            NODE, "-e", GOAWAY_SERVER_JS, json.dumps(cfg), stdout=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            target = Target(LOCAL_IP, json.loads(await proc.stdout.readline())["port"])
            async with pool() as p:
                key = PoolKey(CLIENT_ID, SERVER_ID, LOCAL_IP, target)

                async def open_one() -> Any:
                    return await p.open(key, plain_socket, pki.client_ctx(), [SERVER_ID],
                                        Target("10.0.0.5", 8080))

                first = await open_one()
                seen = [json.loads(await proc.stdout.readline())]
                # Whether the GOAWAY arrived first (no new stream on that connection) or the
                # CONNECT crossed it (nghttp2 refuses it, REFUSED_STREAM, and the pool
                # retries), the second tunnel rides a new connection.
                second = await open_one()
                seen.append(json.loads(await proc.stdout.readline()))
                assert p.dials == 2
                for stream in (first, second):
                    await stream.write(payload)
                    stream.close_write()
                    assert await read_stream(stream) == payload
                # Node answers no TLS close_notify on the drained session: end it first, or
                # closing the pool waits for its close guard (handshake_timeout).
                proc.terminate()
                await proc.wait()
                return seen
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()

    assert run(go()) == [{"session": 1, "stream": 1}, {"session": 2, "stream": 1}]


GOAWAY_CLIENT_JS = r"""
const http2 = require('node:http2');
const cfg = JSON.parse(process.argv[1]);
const client = http2.connect(cfg.url, {
  ca: cfg.ca, cert: cfg.cert, key: cfg.key,
  minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', checkServerIdentity: () => undefined,
});
client.on('error', (e) => { console.log(JSON.stringify({error: e.message})); process.exit(2); });
const out = {};
client.on('goaway', (code, last) => {
  out.goaway = [code, last];
  req.end(Buffer.alloc(cfg.size, 'g'));  // the tunnel goes on after the server's GOAWAY
});
const req = client.request({':method': 'CONNECT', ':authority': cfg.authority});
let length = 0;
req.on('response', (h) => { out.status = h[':status']; console.log(JSON.stringify({open: true})); });
req.on('data', (c) => { length += c.length; });
req.on('close', () => {
  out.length = length;
  out.rst = req.rstCode;
  console.log(JSON.stringify(out));
  client.close();
});
"""


def test_our_draining_server_lets_a_node_client_finish_its_tunnel(pki: Pki) -> None:
    """Our server drains with a Node (nghttp2) client's tunnel open: Node sees GOAWAY
    (NO_ERROR, its stream as the last), and the tunnel still carries data both ways."""
    size = 1 << 20

    async def go() -> dict[str, Any]:
        async with rig(pki) as r:
            cfg = {"url": f"https://{r.hbone}", "authority": str(r.app), "size": size,
                   **_creds(pki.client)}
            proc = await asyncio.create_subprocess_exec(
                NODE, "-e", GOAWAY_CLIENT_JS, json.dumps(cfg), stdout=asyncio.subprocess.PIPE)
            assert proc.stdout is not None
            assert json.loads(await proc.stdout.readline()) == {"open": True}
            r.drain_existing()
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out
            await eventually(lambda: r.finished == 1)  # closed after its last tunnel
            report: dict[str, Any] = json.loads(out)
            return report

    assert run(go()) == {"goaway": [0, 1], "status": 200, "length": size, "rst": 0}
