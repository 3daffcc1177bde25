"""`H2Shell` driven directly (a fake transport, a client core on the other side): how core
events that arrive together become stream states."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from inmesh.hbone._shell import H2Shell
from inmesh.hbone.errors import StreamResetError
from inmesh.hbone.headers import Target
from inmesh.hbone.protocol import ClientConnection, ServerConnection
from inmesh.hbone.settings import HboneSettings
from inmesh.hbone.stream import HboneStream

from .helpers import CLIENT_ID, run

POD = "10.0.0.1"


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False

    def write(self, data: Any) -> None:
        self.written += data

    def writelines(self, chunks: list[Any]) -> None:
        for chunk in chunks:
            self.written += chunk

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class Tunnel:
    """A server shell on a fake transport with one accepted CONNECT stream from ``client``."""

    def __init__(self, settings: HboneSettings | None = None) -> None:
        settings = settings or HboneSettings()
        loop = asyncio.get_running_loop()
        accepted: list[HboneStream] = []
        self.shell = H2Shell(ServerConnection(settings, loop.time(), [POD]),
                             lambda _: CLIENT_ID, "test", accepted.append)
        self.transport = FakeTransport()
        self.shell._transport = self.transport  # type: ignore[assignment]
        self.shell.identity = CLIENT_ID
        self.client = ClientConnection(settings, loop.time())
        self.sid = self.client.open_stream(Target(POD, 8080))
        self.shell.data_received(self.client.data_to_send())
        [self.stream] = accepted
        self.shell.accept(self.stream)
        self.client.receive(self.transport.take())


def test_end_stream_and_goaway_in_one_read_fail_the_stream() -> None:
    """The client half-closes and hangs up at once (GOAWAY with an error): the server's stream
    must break (its relay resets the app side), not look alive with its connection gone
    (close_write would raise)."""

    async def main() -> None:
        tunnel = Tunnel()
        shell, client, stream, sid = tunnel.shell, tunnel.client, tunnel.stream, tunnel.sid

        client.end_stream(sid)
        goaway = GoAwayFrame(0)
        goaway.last_stream_id, goaway.error_code = 0, ErrorCodes.INTERNAL_ERROR
        # END_STREAM and GOAWAY in one read
        shell.data_received(client.data_to_send() + goaway.serialize())

        assert stream.error is not None
        stream.close_write()  # a no-op now, not LocalProtocolError
        with pytest.raises(StreamResetError):
            await stream.read()

    run(main())


def test_data_delivered_by_a_sink_and_end_stream_in_one_read_still_end_the_stream() -> None:
    """The sink acknowledges while the batch is applied, which finishes the stream in the
    core; the END_STREAM later in the same batch must still reach the waiting reader."""

    async def main() -> None:
        tunnel = Tunnel()
        shell, client, stream, sid = tunnel.shell, tunnel.client, tunnel.stream, tunnel.sid
        stream.close_write()  # our side is done: the stream finishes once the peer's is
        client.receive(tunnel.transport.take())

        delivered: list[bytes] = []

        def sink(data: bytes | memoryview) -> int:
            delivered.append(bytes(data))
            return len(data)  # the stream acknowledges what its sink wrote

        stream.set_sink(sink)
        reader = asyncio.create_task(stream.read())
        await asyncio.sleep(0)  # parked in read()
        client.send(sid, b"late reply")
        client.end_stream(sid)
        shell.data_received(client.data_to_send())  # DATA and END_STREAM in one read

        assert delivered == [b"late reply"]
        async with asyncio.timeout(1):
            assert await reader == b""  # the END_STREAM arrived

    run(main())


def test_bytes_lent_from_the_read_buffer_are_copied_when_kept() -> None:
    """The TLS layer decrypts into the shell's own buffer and the streams get views of it:
    bytes a stream keeps (its reader busy) must survive the next read overwriting the buffer;
    bytes a sink writes out at once are not copied at all."""

    async def main() -> None:
        tunnel = Tunnel()
        shell, client, stream, sid = tunnel.shell, tunnel.client, tunnel.stream, tunnel.sid

        def feed(wire: bytes) -> None:  # what a TLS transport does with a BufferedProtocol
            buffer = shell.get_buffer(len(wire))
            buffer[:len(wire)] = wire
            shell.buffer_updated(len(wire))

        client.send(sid, b"first")
        feed(client.data_to_send())  # nobody reads yet: kept
        shell.get_buffer(4096)[:4096] = b"Z" * 4096  # the next read reuses the buffer
        client.send(sid, b"again")
        feed(client.data_to_send())
        assert bytes(await stream.read()) == b"first"
        assert bytes(await stream.read()) == b"again"

        seen: list[object] = []

        def sink(data: bytes | memoryview) -> int:
            seen.append(type(data))
            return len(data)

        stream.set_sink(sink)
        reader = asyncio.create_task(stream.read())
        await asyncio.sleep(0)  # parked
        client.send(sid, b"third")
        feed(client.data_to_send())
        assert seen == [memoryview]  # written out from the buffer itself
        reader.cancel()

    run(main())


def _pings(data: bytes) -> int:
    """PING frames (not ACKs) in a run of whole HTTP/2 frames."""
    count, pos = 0, 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        count += kind == 0x6 and not flags & 0x1
        pos += 9 + length
    return count


def test_pings_keep_their_cadence_while_the_peer_answers() -> None:
    """The shell moves its timer only when the core counts a deadline change: a PING ACK must
    count, or the next PING would wait for the old ACK deadline (ping_timeout) instead of
    ping_interval."""

    async def main() -> None:
        tunnel = Tunnel(HboneSettings(ping_interval=0.02, ping_timeout=5.0))
        loop = asyncio.get_running_loop()
        pings = 0
        end = loop.time() + 0.3
        while loop.time() < end:
            await asyncio.sleep(0.005)
            out = tunnel.transport.take()
            pings += _pings(out)
            tunnel.client.receive(out)  # h2 answers each PING with an ACK
            tunnel.shell.data_received(tunnel.client.data_to_send())
        assert pings >= 8  # ~15 at a 20 ms cadence; a timer left at the ACK deadline: 1

    run(main())
