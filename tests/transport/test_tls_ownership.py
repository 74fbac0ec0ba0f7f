"""A TLS handshake abandoned after it completed leaves no socket whose descriptor was
freed under a live transport (transport/tls.py: the transport owns a duplicate)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from samizdat.client.connection import now_ms
from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.links import decode_server_link
from samizdat.server.app import ServerConfig, start
from samizdat.transport import tls
from samizdat.transport.route import DIRECT, open_tcp


async def test_a_handshake_cancelled_after_it_completed_frees_no_live_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await start(ServerConfig(data_dir=tmp_path / "srv", print_link=False))
    real = asyncio.open_connection

    async def done_then_cancelled(**kwargs: Any) -> Any:
        # The race: the handshake completed, then the waiting task was cancelled, and
        # asyncio closed the new transport gracefully (a TLS close_notify exchange).
        _, writer = await real(**kwargs)
        writer.close()
        raise asyncio.CancelledError

    try:
        descriptor = open_descriptor(decode_server_link(running.link).descriptor, now_ms())
        monkeypatch.setattr(asyncio, "open_connection", done_then_cancelled)
        sock = await open_tcp(DIRECT, "127.0.0.1", running.port, 5)
        with pytest.raises(asyncio.CancelledError):
            await tls.open_tls(sock, tls.server_context(descriptor), None, None, 5)
        # The next socket takes the lowest free descriptor number: if the transport's
        # had been freed under it, asyncio would refuse this connect.
        fresh = socket.socket()
        fresh.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(fresh, ("127.0.0.1", running.port))
        finally:
            fresh.close()
    finally:
        await running.stop()
