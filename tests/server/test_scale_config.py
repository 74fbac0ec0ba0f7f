"""The composition root picks store and bus from the command line (docs/scaling.md)."""

from __future__ import annotations

import asyncio.sslproto
import ssl
from pathlib import Path

import pytest

from samizdat.cli import build_parser
from samizdat.errors import LocalError
from samizdat.server.app import RunningServer, ServerConfig, make_store
from samizdat.server.store.postgres import PostgresStore
from samizdat.server.store.sqlite import SqliteStore
from samizdat.server.tuning import TLS_READ_BUFFER, shared_tls_buffer


def test_store_url_selects_the_backend(tmp_path: Path) -> None:
    assert isinstance(make_store(ServerConfig(data_dir=tmp_path)), SqliteStore)
    pg = make_store(ServerConfig(data_dir=tmp_path, store_url="postgresql://u:pw@127.0.0.1/x"))
    assert isinstance(pg, PostgresStore) and "pw" not in repr(pg)
    with pytest.raises(LocalError):
        make_store(ServerConfig(data_dir=tmp_path, store_url="mysql://127.0.0.1/x"))
    # The URLs may carry passwords: never in the config's repr.
    config = ServerConfig(
        data_dir=tmp_path, store_url="postgresql://u:pw@h/x", bus_url="redis://:pw@h/0"
    )
    assert "pw" not in repr(config)


def test_cli_scale_out_options() -> None:
    args = build_parser().parse_args(
        [
            "server",
            "--data-dir",
            "d",
            "--store",
            "postgresql://127.0.0.1/x",
            "--bus",
            "redis://127.0.0.1:6379/0",
            "--identity-dir",
            "ident",
            "--endpoint",
            "wss://127.0.0.1:1/v1/ws",
            "--endpoint",
            "wss://127.0.0.1:2/v1/ws",
        ]
    )
    assert args.store == "postgresql://127.0.0.1/x" and args.bus == "redis://127.0.0.1:6379/0"
    assert args.identity_dir == "ident"
    assert args.endpoint == ["wss://127.0.0.1:1/v1/ws", "wss://127.0.0.1:2/v1/ws"]


async def test_tls_connections_share_one_read_buffer(server: RunningServer) -> None:
    # A read buffer per connection was most of an idle connection's memory (tuning.py).
    # The patch is process-wide, so this process's own client connections show it.
    assert asyncio.sslproto.SSLProtocol.max_size >= TLS_READ_BUFFER
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    writers = []
    for _ in range(2):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
        writers.append(writer)
    try:
        buffers = [w.transport._ssl_protocol._ssl_buffer for w in writers]  # type: ignore[attr-defined]
        assert buffers[0] is buffers[1] is shared_tls_buffer(TLS_READ_BUFFER)[0]
        assert len(buffers[0]) >= asyncio.sslproto.SSLProtocol.max_size
    finally:
        for writer in writers:
            writer.close()
            await writer.wait_closed()
