"""The pods' echo server answers every line with the peer address it saw."""

from __future__ import annotations

import json
import socket
import threading

from inmesh.lab.echo import EchoServer, _Handler


def test_each_line_is_answered_with_the_peer_address() -> None:
    with EchoServer(("127.0.0.1", 0), _Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with socket.create_connection(server.server_address[:2], timeout=5) as sock:
                local = "{}:{}".format(*sock.getsockname()[:2])
                sock.sendall(b"hello\nagain\n")
                replies = b""
                while replies.count(b"\n") < 2:
                    chunk = sock.recv(4096)
                    assert chunk
                    replies += chunk
        finally:
            server.shutdown()
            thread.join()
    first, second = (json.loads(line) for line in replies.splitlines())
    assert first == {"peer": local, "echo": "hello"}
    assert second == {"peer": local, "echo": "again"}
