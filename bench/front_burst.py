"""Server CPU per answer when clients pipeline K requests in one write: the front's path.

Starts one ``samizdat server`` (pinned to core 0; this client on core 1) and opens
``--connections`` TLS WebSockets. Each sends Hello, then bursts of ``--burst`` Subscribe
frames before logging in, one burst per write, and reads the K answers before the next.
The session answers those without the store, so the figure is the front's read, the
session's dispatch and the front's write path. With K > 1 the answers of a burst are
produced in one event-loop turn, which the front writes together (server/front.py).
The client is stdlib asyncio TLS, slow but not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import tempfile
import time
from pathlib import Path

from websockets.frames import Frame, Opcode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openloop import cpu_seconds  # noqa: E402
from rawclient import pin_generator, serving  # noqa: E402
from samizdat.protocol import frames as f  # noqa: E402
from samizdat.protocol.descriptor import open_descriptor  # noqa: E402
from samizdat.protocol.links import decode_server_link  # noqa: E402

UPGRADE = (
    b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _masked(frame: f.ClientFrame) -> bytes:
    return Frame(Opcode.BINARY, f.encode(frame)).serialize(mask=True)


async def _read_frame(reader: asyncio.StreamReader) -> None:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    await reader.readexactly(size)


async def _clients(link: str, burst: int, rounds: int, connections: int) -> None:
    descriptor = open_descriptor(decode_server_link(link).descriptor, int(time.time() * 1000))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=descriptor.tls_ca)
    host, _, port = descriptor.endpoints[0].url.split("//")[1].split("/")[0].rpartition(":")
    requests = b"".join(_masked(f.Subscribe(rid=n + 1)) for n in range(burst))

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
        writer.write(UPGRADE)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(_masked(f.Hello(versions=[1], client="front_burst")))
        await _read_frame(reader)
        for _ in range(rounds):
            writer.write(requests)
            for _ in range(burst):
                await _read_frame(reader)
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=4, help="requests per write (K)")
    parser.add_argument("--answers", type=int, default=30_000, help="answers measured")
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        serving(Path(tmp) / "server", pin=True) as (server, link, _pinning),
    ):
        pin_generator()  # this process is the client
        asyncio.run(_clients(link, args.burst, 5, args.connections))  # warm-up
        rounds = max(1, args.answers // (args.burst * args.connections))
        cpu, start = cpu_seconds(server.pid), time.monotonic()
        asyncio.run(_clients(link, args.burst, rounds, args.connections))
        cpu, took = cpu_seconds(server.pid) - cpu, time.monotonic() - start
        answers = rounds * args.burst * args.connections
        print(
            f"burst {args.burst}: {answers} answers in {took:.1f} s; "
            f"server CPU {1e6 * cpu / answers:.1f} us per answer"
        )


if __name__ == "__main__":
    main()
