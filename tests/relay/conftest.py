"""Relay scenarios: a real ``samizdat relay`` process next to a real server process."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from samizdat.protocol.links import decode_relay_link
from samizdat.protocol.relay import RelayLink
from tests.censorship.conftest import World
from tests.e2e.harness import terminate


class RelayProc:
    """``samizdat relay`` as a process; records every forwarded byte to ``record``."""

    def __init__(
        self, data_dir: Path, host: str, port: int, *args: str, record: bool = True
    ) -> None:
        self.data_dir = data_dir
        self.recording = record
        self.host = host
        self.port = port
        self.args = args
        self.record = data_dir / "forwarded.bin"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def link_text(self) -> str:
        return (self.data_dir / "relay-link").read_text().strip()

    @property
    def link(self) -> RelayLink:
        return decode_relay_link(self.link_text)

    async def start(self) -> RelayProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "relay-ready").unlink(missing_ok=True)
        log = (self.data_dir.parent / f"{self.data_dir.name}.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "samizdat", "relay", "--data-dir", str(self.data_dir),
            "--listen", f"{self.host}:{self.port}", "--no-qr", "--metrics", "127.0.0.1:0",
            *(("--record", str(self.record)) if self.recording else ()), *self.args,
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError("relay exited while starting")
            if (self.data_dir / "relay-ready").exists():
                return self
            await asyncio.sleep(0.05)
        raise RuntimeError("relay did not start")

    async def stats(self) -> dict[str, int]:
        address = (self.data_dir / "metrics-address").read_text().strip()
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        out: dict[str, int] = json.loads(data.split(b"\r\n\r\n", 1)[1])
        return out

    async def close(self) -> None:
        await terminate(self.proc)


async def start_relay(world: World, host: str, port: int, *args: str) -> RelayProc:
    relay = RelayProc(world.tmp / f"relay-{host}-{port}", host, port, *args)
    world.add(relay)
    return await relay.start()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        await w.close()


def upstream(server_link: str, host: str, port: int) -> str:
    """``--upstream`` value: the relay (abroad) reaches the server at its real address."""
    return f"{server_link}={host}:{port}"


Json = dict[str, Any]
