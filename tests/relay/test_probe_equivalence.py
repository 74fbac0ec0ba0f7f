"""Relay probe resistance: every probe gets the same answer from a relay as from the same
web server with no relay behind it (bytes returned, how the connection ends, timing).

The baseline (tests/relay/decoy_only.py) is the relay's own web server, same certificate
and limits, with every link revoked and no upstream: what a prober would find on an
ordinary host running that server. See docs/security.md (relay) for what this shows.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
import time

import msgspec

from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.links import decode_server_link
from samizdat.transport.dial import now_ms
from samizdat.transport.relay import open_relay, tls_over
from samizdat.transport.tls import server_context
from tests.censorship.conftest import World
from tests.censorship.net import free_port
from tests.relay.conftest import RelayProc, start_relay, upstream
from tests.relay.net import Tap, handshake
from tests.relay.probe import Answer, first_record, observe

SNI = "relay.example"
#: Probes in flight at once (times two hosts).
BATCH = 6
GET = b"GET / HTTP/1.1\r\nHost: relay.example\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"


async def _decoy(world: World, relay: RelayProc) -> tuple[asyncio.subprocess.Process, int]:
    folder = world.tmp / "decoy-only"
    folder.mkdir()
    for name in ("relay.key", "tls.pem", "tls.key", "links.json"):
        shutil.copy(relay.data_dir / name, folder / name)
    port = free_port("127.0.0.11")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.relay.decoy_only", str(folder), "127.0.0.11", str(port),
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not (folder / "decoy-ready").exists():
        assert proc.returncode is None and time.monotonic() < deadline, "decoy did not start"
        await asyncio.sleep(0.05)
    return proc, port


async def test_probes_cannot_tell_a_relay_from_its_web_server(world: World) -> None:
    server_port = free_port("127.0.0.2")
    server = await world.server("127.0.0.2", port=server_port)
    relay = await start_relay(
        world, "127.0.0.9", free_port("127.0.0.9"),
        "--upstream", upstream(server.link, "127.0.0.2", server_port),
        "--sni", SNI, "--address-rate", "1000",
    )  # fmt: skip
    server_key = open_descriptor(decode_server_link(server.link).descriptor, now_ms()).server_key

    # A censor records one real client connection through the relay.
    tap = world.add(await Tap("127.0.0.10", (relay.host, relay.port)).start())
    via_tap = msgspec.structs.replace(relay.link, addresses=[f"127.0.0.10:{tap.port}"])
    tunnel = await open_relay(via_tap, server_key, now_ms(), 5)
    descriptor = open_descriptor(decode_server_link(server.link).descriptor, now_ms())
    inner = await tls_over(tunnel, server_context(descriptor), None, descriptor.tls_pin, 5)
    inner[1].transport.abort()
    hello = first_record(tap.sent)
    assert hello[0] == 0x16 and len(tap.sent) > len(hello)

    # A real client's first request, used once (it tunnels), then in the probe set.
    used = handshake(relay.link, server_key)
    first = await observe(relay.host, relay.port, used, SNI)
    assert first.reply.startswith("HTTP/1.1 101 ")

    rng = random.Random(9)
    forged = msgspec.structs.replace(relay.link, secret=os.urandom(32))
    raw: dict[str, bytes] = {
        "random bytes": rng.randbytes(517),
        "plain HTTP": GET,
        "nothing": b"",
        "replayed first packet": hello,
        "replayed connection": tap.sent,
        "malformed hello (truncated)": hello[:60],
        "malformed hello (garbage record)": b"\x16\x03\x01\x00\x40" + rng.randbytes(64),
    }
    for i in range(10):
        flipped = bytearray(hello)
        at = rng.randrange(len(flipped)) if i else 1  # the first flip hits the header
        flipped[at] ^= 1 << rng.randrange(8)
        raw[f"bit-flipped first packet #{i} (byte {at})"] = bytes(flipped)
    in_tls: dict[str, bytes] = {
        "GET /": GET,
        "GET /admin": GET.replace(b"GET / ", b"GET /admin "),
        "POST /": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        "HTTP/1.0": b"GET / HTTP/1.0\r\n\r\n",
        "garbage head": rng.randbytes(300) + b"\r\n\r\n",
        "replayed proof": used,
        "forged proof": handshake(forged, server_key),
        "stale proof": handshake(relay.link, server_key, at_ms=now_ms() - 10 * 60_000),
        "malformed proof": used.replace(b"Bearer ", b"Bearer !!"),
    }
    probes: list[tuple[str, bytes, str | None]] = [(n, p, None) for n, p in raw.items()]
    for sni, label in ((SNI, "right name"), ("www.example.com", "wrong name"), ("", "no name")):
        probes += [(f"TLS {label}: {n}", p, sni) for n, p in in_tls.items()]

    decoy, decoy_port = await _decoy(world, relay)
    try:
        differences: list[str] = []
        answers: dict[str, Answer] = {}

        async def probe(name: str, payload: bytes, sni: str | None) -> None:
            at_relay, at_decoy = await asyncio.gather(
                observe(relay.host, relay.port, payload, sni),
                observe("127.0.0.11", decoy_port, payload, sni),
            )
            answers[name] = at_relay
            if not at_relay.same_as(at_decoy):
                differences.append(f"{name}:\n  relay {at_relay}\n  decoy {at_decoy}")

        # A few probes at a time, each to both hosts at once: the same load on both.
        for i in range(0, len(probes), BATCH):
            await asyncio.gather(*(probe(*p) for p in probes[i : i + BATCH]))
    finally:
        decoy.send_signal(signal.SIGTERM)
        await decoy.wait()
    assert not differences, "\n".join(differences)

    # And the answers are real ones, not two silent hosts agreeing.
    site = answers["TLS right name: GET /"]
    assert site.reply.startswith("HTTP/1.1 200 OK\r\n") and "Welcome to nginx!" in site.reply
    for sni_label in ("right name", "wrong name", "no name"):
        for name in ("replayed proof", "forged proof", "stale proof", "malformed proof"):
            assert answers[f"TLS {sni_label}: {name}"].reply == site.reply, name
    assert answers["replayed first packet"].reply.startswith("22 ")  # a full ServerHello
    assert answers["nothing"] == Answer("", (), "open", "never")
    stats = await relay.stats()
    assert stats["upstream_connections"] == 2  # the recorded client and the first request
