"""The front (server/front.py): /v1/ws upgrades go to picows, everything else to uvicorn as
before; fragmented and oversized messages, idle connections without tasks, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from samizdat.protocol import frames as f
from samizdat.protocol import limits
from samizdat.protocol.descriptor import open_descriptor
from samizdat.server import front
from samizdat.server.app import RunningServer, ServerConfig, start
from samizdat.server.front import WS_MAX_SIZE, frame_messages, is_ws_upgrade

from .helpers import FrameClient, client_ssl_context
from .test_session import env, recv_deliveries, setup_user

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    b"GET /v1/ws HTTP/1.1\r\nHost: example.org\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13"
)


@pytest.mark.parametrize(
    ("head", "upgrade"),
    [
        (UPGRADE, True),
        (UPGRADE.replace(b"/v1/ws ", b"/v1/ws?x=1 "), True),
        (UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade"), True),
        (UPGRADE.replace(b"/v1/ws", b"/v1/wss"), False),
        (UPGRADE.replace(b"GET", b"POST"), False),
        (UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"), False),
        (UPGRADE.replace(b"Upgrade: websocket\r\n", b""), False),
        (UPGRADE.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), False),
        (UPGRADE.replace(KEY, b"short"), False),
        (UPGRADE.replace(b"Host: example.org\r\n", b""), False),
        (UPGRADE + b"\r\nContent-Length: 5", False),
        (UPGRADE + b"\r\nTransfer-Encoding: chunked", False),
        (UPGRADE + b"\r\nHost: twice.example", False),
        (UPGRADE + b"\r\nno colon here", False),
    ],
)
def test_only_a_plain_upgrade_to_v1_ws_goes_to_picows(head: bytes, upgrade: bool) -> None:
    assert is_ws_upgrade(head) is upgrade


async def _raw(running: RunningServer, request: bytes) -> bytes:
    """Send ``request`` over TLS and read until the server closes (or 2 s pass)."""
    context = client_ssl_context(open_descriptor(running.descriptor, 0))
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=context)
    writer.write(request)
    answer = b""
    try:
        async with asyncio.timeout(2):
            while chunk := await reader.read(65536):
                answer += chunk
    except TimeoutError:
        pass
    finally:
        writer.close()
    return answer


@pytest.mark.slow
async def test_other_requests_get_uvicorns_answers(tmp_path: Path) -> None:
    running = await start(ServerConfig(data_dir=tmp_path, print_link=False))
    try:
        plain = await _raw(running, b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        other = await _raw(running, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert plain.startswith(b"HTTP/1.1 404 ") and other.startswith(b"HTTP/1.1 404 ")
        # The same head, byte for byte, but the date.
        assert plain.split(b"\r\n")[0] == other.split(b"\r\n")[0]
        assert plain.partition(b"\r\n\r\n")[2] == other.partition(b"\r\n\r\n")[2]
        # A WebSocket to another path is refused by uvicorn (Starlette), as before.
        refused = await _raw(running, UPGRADE.replace(b"/v1/ws", b"/v1/other") + b"\r\n\r\n")
        assert refused.startswith(b"HTTP/1.1 403 ")
        # Garbage gets uvicorn's 400.
        garbage = await _raw(running, b"\x16\x03\x01hello there\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400 ")
        # A head sent in pieces still reaches picows.
        context = client_ssl_context(open_descriptor(running.descriptor, 0))
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=context)
        for piece in (UPGRADE[:3], UPGRADE[3:40], UPGRADE[40:], b"\r\n\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 101 ")
        head = b""
        while (line := await asyncio.wait_for(reader.readline(), 5)) != b"\r\n":
            head += line.lower()
        # Dated like uvicorn's answers above, so the handshake is not the odd one out.
        assert b"\r\ndate: " in b"\r\n" + head and b"\r\ndate: " in plain.lower()
        writer.close()
    finally:
        await running.stop()


async def test_fragmented_and_oversized_messages(tmp_path: Path) -> None:
    running = await start(ServerConfig(data_dir=tmp_path, print_link=False))
    try:
        async with FrameClient(running.link) as client:
            hello = f.encode(f.Hello(versions=[1], client="test"))
            await client.ws.send([hello[:3], hello[3:7], hello[7:]])  # three frames
            assert isinstance(await client.recv(), f.Welcome)
            # Above MAX_FRAME but within the WebSocket limit: our own error.
            await client.send_raw(b"\x00" * (limits.MAX_FRAME + 1))
            answer = await client.recv()
            assert isinstance(answer, f.Error) and answer.code == "frame_too_large"
            # Above the WebSocket limit, in fragments: closed with 1009.
            part = b"\x00" * (WS_MAX_SIZE // 2 + 1)
            await client.ws.send([part, part])
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    finally:
        await running.stop()


async def test_idle_connections_hold_no_task_and_shutdown_closes_them(tmp_path: Path) -> None:
    running = await start(ServerConfig(data_dir=tmp_path, print_link=False))
    clients = [FrameClient(running.link) for _ in range(10)]
    try:
        await clients[0].__aenter__()
        await clients[0].hello()
        before = _server_tasks()
        for client in clients[1:]:
            await client.__aenter__()
            await client.hello()
        await asyncio.sleep(0.1)
        # The old driver kept a reader and a writer task per connection.
        assert _server_tasks() == before
        assert running._stats.open == 10
        stop = asyncio.ensure_future(running.stop())
        for client in clients:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        await asyncio.wait_for(stop, 10)
        assert running._stats.open == 0
    finally:
        await running.stop()


def _server_tasks() -> int:
    """Tasks running code of the server package (the server runs in this process)."""
    count = 0
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "samizdat/server/" in code.co_filename:
            count += 1
    return count


async def test_keepalive_drops_a_silent_peer_and_keeps_one_that_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front, "PING_SWEEP", 0.1)
    monkeypatch.setattr(front, "PING_IDLE", 0.3)
    monkeypatch.setattr(front, "PING_TIMEOUT", 0.3)
    running = await start(ServerConfig(data_dir=tmp_path, print_link=False))
    try:
        async with FrameClient(running.link) as client:  # websockets answers pings
            await client.hello()
            context = client_ssl_context(open_descriptor(running.descriptor, 0))
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=context)
            writer.write(UPGRADE + b"\r\n\r\n")  # then never answers a ping
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101 ")
            received = b""
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(5):
                    while chunk := await reader.read(1024):
                        received += chunk
            assert received[:1] == b"\x89"  # it was pinged, then dropped
            writer.close()
            # The answering client was pinged too (the same time passed) and lives on.
            await client.send(f.Hello(versions=[1], client="test"))
            answer = await asyncio.wait_for(client.recv(), 5)
            assert isinstance(answer, f.Error) and answer.code == "bad_frame"
    finally:
        await running.stop()


async def test_a_subscriber_that_does_not_read_is_held_back_then_gets_everything(
    tmp_path: Path,
) -> None:
    running = await start(ServerConfig(data_dir=tmp_path, print_link=False))
    try:
        async with FrameClient(running.link) as c, FrameClient(running.link) as sender:
            await c.hello()
            await sender.hello()
            user, token = await setup_user(c)
            device = user.devices[0]
            big = os.urandom(60_000)
            count = 240  # ~14 MB: more than the socket buffers and the client's queue hold
            for first in range(0, count, 3):
                envelopes = [env(device, n, big) for n in range(first, first + 3)]
                ok = await sender.request(
                    f.Deposit(rid=sender.rid(), token=token, envelopes=envelopes)
                )
                assert isinstance(ok, f.DepositOk) and ok.stored == 3
            (session,) = [s for s in running._stats.sessions if s.authenticated]
            await c.send(f.Subscribe(rid=c.rid(), after=0))
            # The client does not read: the transport's buffer fills and the outbox holds
            # frames back (then the delivery task waits on it), instead of buffering all.
            async with asyncio.timeout(20):
                while not session._outbox._paused:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert session._outbox.qsize() <= 32
            assert isinstance(await asyncio.wait_for(c.recv(), 5), f.Ok)
            entries = await recv_deliveries(c, count)
            assert [e.seq for e in entries] == list(range(1, count + 1))
            assert all(e.body == big for e in entries)
            assert not session._outbox._paused
    finally:
        await running.stop()


@given(st.lists(st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]) | st.integers(0, 300)))
def test_frame_messages_frames_as_rfc_6455_says(sizes: list[int]) -> None:
    messages = [bytes([n % 251]) * n for n in sizes]
    expected = b"".join(Frame(Opcode.BINARY, m).serialize(mask=False) for m in messages)
    assert frame_messages(messages) == expected


class _RecordWire:
    """A TLS client on a plain TCP stream that feeds the server's TLS records to its
    ``SSLObject`` one at a time: :meth:`record` is the plaintext of one record, so a test
    sees how the server cut what it wrote (each transport write is its own record)."""

    def __init__(self, running: RunningServer) -> None:
        self._running = running
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        context = client_ssl_context(open_descriptor(running.descriptor, 0))
        self._tls = context.wrap_bio(self._incoming, self._outgoing)
        self._raw = b""

    async def open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._running.port)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._push()
                self._incoming.write(await self._next_record())
        self.send(UPGRADE + b"\r\n\r\n")
        assert (await self.record()).startswith(b"HTTP/1.1 101 ")

    def close(self) -> None:
        self._writer.close()

    def send(self, data: bytes) -> None:
        self._tls.write(data)
        self._push()

    def send_frames(self, frames: list[f.ClientFrame]) -> None:
        """Client frames as masked WebSocket messages, in one TLS record."""
        self.send(b"".join(Frame(Opcode.BINARY, f.encode(x)).serialize(mask=True) for x in frames))

    async def record(self) -> bytes:
        """The plaintext of the next record that carries any (TLS 1.3 session tickets do
        not); b"" at the end of the stream."""
        while True:
            try:
                self._incoming.write(await self._next_record())
            except asyncio.IncompleteReadError:
                return b""
            plain = b""
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                while chunk := self._tls.read(1 << 20):
                    plain += chunk
            if plain:
                return plain

    def _push(self) -> None:
        if pending := self._outgoing.read():
            self._writer.write(pending)

    async def _next_record(self) -> bytes:
        head = await self._reader.readexactly(5)  # type, version, length (RFC 8446 §5.1)
        return head + await self._reader.readexactly(int.from_bytes(head[3:5], "big"))


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole, unmasked frame in ``data``."""
    frames = []
    while data:
        opcode, size, data = data[0] & 0x0F, data[1] & 0x7F, data[2:]
        if size == 126:
            size, data = int.from_bytes(data[:2], "big"), data[2:]
        elif size == 127:
            size, data = int.from_bytes(data[:8], "big"), data[8:]
        assert len(data) >= size, "a frame cut across records"
        frames.append((opcode, data[:size]))
        data = data[size:]
    return frames


async def test_frames_of_one_turn_go_out_in_one_write_in_order(tmp_path: Path) -> None:
    running = await start(ServerConfig(data_dir=tmp_path, print_link=False))
    wire = _RecordWire(running)
    try:
        await wire.open()
        wire.send_frames([f.Hello(versions=[1], client="test")])
        ((_, welcome),) = _server_frames(await wire.record())
        assert isinstance(f.decode_server_frame(welcome), f.Welcome)
        # Pipelined requests the session answers without waiting for anything: their
        # answers are produced in one turn, so they share one write (one TLS record).
        rids = list(range(1, front.MAX_PENDING))
        wire.send_frames([f.Subscribe(rid=rid) for rid in rids])
        answers = [f.decode_server_frame(p) for _, p in _server_frames(await wire.record())]
        assert [(a.rid, a.code) for a in answers if isinstance(a, f.Error)] == [
            (rid, "not_authenticated") for rid in rids
        ]
        assert len(answers) == len(rids)
    finally:
        wire.close()
        await running.stop()


async def test_frames_of_a_closing_turn_go_out_before_the_close_frame(tmp_path: Path) -> None:
    running = await start(ServerConfig(data_dir=tmp_path, print_link=False))
    wire = _RecordWire(running)
    try:
        await wire.open()
        # Before Hello: bad frames are answered, anything else is answered and closes.
        bad = Frame(Opcode.BINARY, b"\xc1").serialize(mask=True)
        subscribe = Frame(Opcode.BINARY, f.encode(f.Subscribe(rid=7))).serialize(mask=True)
        wire.send(bad * 3 + subscribe)
        records: list[list[tuple[int, bytes]]] = []
        while not records or records[-1][-1][0] != Opcode.CLOSE:
            records.append(_server_frames(await asyncio.wait_for(wire.record(), 5)))
        received = [frame for record in records for frame in record]
        assert [op for op, _ in received] == [Opcode.BINARY] * 4 + [Opcode.CLOSE]
        # The answers were written together, before the close frame.
        assert len(records[0]) == 4
        errors = [f.decode_server_frame(p) for _, p in received[:4]]
        assert [(e.rid, e.code) for e in errors if isinstance(e, f.Error)] == [
            (None, "bad_frame"),
            (None, "bad_frame"),
            (None, "bad_frame"),
            (7, "bad_frame"),
        ]
    finally:
        wire.close()
        await running.stop()
