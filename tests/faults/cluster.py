"""Two server nodes on PostgreSQL and Redis, with faults: SIGKILL a node, "restart" PostgreSQL.

The machine's PostgreSQL is shared (other tests and people use it), so it is never
restarted for real. Instead the nodes reach it through :class:`PgProxy`, a TCP forwarder
on loopback in front of 127.0.0.1:5432: a "PostgreSQL restart" aborts every proxied
connection at once and refuses new ones for a moment, which is what the nodes see when
the database restarts (every pooled connection breaks, reconnects fail until it is back).
PostgreSQL's own crash recovery is not exercised: committed data stays committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from samizdat.server.identity import load_or_create_identity
from tests.e2e.harness import ServerProcess, free_port
from tests.server.services import PG_DSN, REDIS_URL, drop_pg_schema

__all__ = ["PgProxy", "Cluster", "two_nodes"]


class PgProxy:
    """A loopback TCP forwarder to PostgreSQL whose connections can all be cut at once."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.down = False
        self.connections = 0
        self.cut_connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> PgProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()  # connection refused/reset, as while PostgreSQL is down
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._open |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._open -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def restart(self, downtime: float) -> None:
        """Abort every proxied connection and refuse new ones for ``downtime`` seconds."""
        self.down = True
        self.cut_connections += len(self._open) // 2
        for writer in list(self._open):
            writer.transport.abort()
        await asyncio.sleep(downtime)
        self.down = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    proxy: PgProxy
    rng: random.Random
    #: Seconds PostgreSQL stays unreachable in a simulated restart.
    pg_downtime: float = 1.0
    #: A command that restarts the real PostgreSQL (bench/faults.py on a machine of its
    #: own); empty: simulate the restart at the proxy.
    pg_restart_command: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=lambda: ["kill node a", "kill node b", "pg restart"])

    @property
    def links(self) -> list[str]:
        return [self.a.link, self.b.link]

    def __post_init__(self) -> None:
        self.rng.shuffle(self.kinds)

    async def inject(self, k: int) -> str:
        """One fault, taking the kinds in turn (in a seeded order): the workload's Inject."""
        kind = self.kinds[k % len(self.kinds)]
        if kind == "pg restart" and self.pg_restart_command:
            proc = await asyncio.create_subprocess_exec(*self.pg_restart_command)
            if await proc.wait() != 0:
                raise RuntimeError(f"{self.pg_restart_command[0]} failed")
        elif kind == "pg restart":
            await self.proxy.restart(self.pg_downtime)
        else:
            node = self.a if kind == "kill node a" else self.b
            node.kill()
            await asyncio.to_thread(node.start)
        return kind


@contextlib.asynccontextmanager
async def two_nodes(root: Path, seed: int = 1, *extra: str) -> AsyncIterator[Cluster]:
    """Nodes A and B (one identity, both endpoints in the descriptor) on a fresh schema,
    reaching PostgreSQL through a :class:`PgProxy`."""
    schema = f"f_{secrets.token_hex(8)}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    proxy = await PgProxy(("127.0.0.1", 5432)).start()
    base = PG_DSN.rsplit("@", 1)
    host_db = base[1].split("/", 1)
    store = f"{base[0]}@127.0.0.1:{proxy.port}/{host_db[1]}?search_path={schema}"
    identity = root / "identity"
    load_or_create_identity(identity, ["127.0.0.1"])
    port_a, port_b = free_port(), free_port()

    def node(name: str, port: int, other: int) -> ServerProcess:
        return ServerProcess(
            root / name,
            port=port,
            extra_args=(
                "--store", store, "--bus", REDIS_URL, "--identity-dir", str(identity),
                "--endpoint", f"wss://127.0.0.1:{other}/v1/ws", "--token-rate", "1000", *extra,
            ),
        )  # fmt: skip

    a, b = node("node-a", port_a, port_b), node("node-b", port_b, port_a)
    try:
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        yield Cluster(a, b, proxy, random.Random(seed))
    finally:
        b.stop()
        a.stop()
        await proxy.close()
        await drop_pg_schema(schema)
