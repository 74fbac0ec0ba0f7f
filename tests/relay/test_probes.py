"""Must show 2 and 3: probes without the secret see a web site and never make the relay
connect upstream; a server that is not configured is refused."""

from __future__ import annotations

import os

import msgspec
import pytest

from samizdat.errors import StageFailed
from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.links import decode_relay_link, decode_server_link
from samizdat.transport.dial import now_ms
from samizdat.transport.relay import open_relay, tls_over
from samizdat.transport.tls import server_context
from tests.censorship.conftest import PASSPHRASE, World
from tests.censorship.net import free_port, run_cli
from tests.relay.conftest import RelayProc, start_relay, upstream
from tests.relay.net import Tap, exchange, handshake

GET = b"GET / HTTP/1.1\r\nHost: relay.example\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"


async def _setup(world: World) -> tuple[RelayProc, bytes]:
    port = free_port("127.0.0.2")
    server = await world.server("127.0.0.2", port=port)
    relay = await start_relay(
        world,
        "127.0.0.9",
        free_port("127.0.0.9"),
        "--upstream",
        upstream(server.link, "127.0.0.2", port),
    )
    descriptor = open_descriptor(decode_server_link(server.link).descriptor, now_ms())
    return relay, descriptor.server_key


def _site(reply: bytes) -> bytes:
    """Status line and body of a decoy reply (the Date header differs)."""
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0] + b"|" + body


async def test_probes_get_a_web_site_and_nothing_upstream(world: World) -> None:
    relay, server_key = await _setup(world)
    host, port = relay.host, relay.port

    page = await exchange(host, port, GET + b"Connection: close\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200 OK\r\n") and b"Welcome to nginx!" in page
    assert b"Server: nginx\r\n" in page
    missing = await exchange(
        host, port, b"GET /wp-admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n")
    garbage = await exchange(host, port, os.urandom(300) + b"\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    no_tls = await exchange(host, port, os.urandom(512), tls=False)
    assert b"HTTP" not in no_tls

    # A proof for a link the relay never issued, and a stale one: the same site.
    link = relay.link
    forged = msgspec.structs.replace(link, secret=os.urandom(32))
    for request in (
        handshake(forged, server_key),
        handshake(link, server_key, at_ms=now_ms() - 10 * 60_000),
    ):
        assert _site(await exchange(host, port, request)) == _site(page)

    stats = await relay.stats()
    assert stats["upstream_connections"] == 0
    assert stats["proofs_ok"] == 0 and stats["proofs_bad"] == 2
    assert stats["tls_failed"] >= 1 and stats["bad_requests"] >= 1


async def test_replays_are_served_the_site(world: World) -> None:
    relay, server_key = await _setup(world)
    host, port = relay.host, relay.port

    # A censor records a whole real client connection (TCP payload) and plays it again.
    tap = world.add(await Tap("127.0.0.10", (host, port)).start())
    via_tap = msgspec.structs.replace(relay.link, addresses=[f"127.0.0.10:{tap.port}"])
    tunnel = await open_relay(via_tap, server_key, now_ms(), 5)
    descriptor = open_descriptor(decode_server_link(_server_link(world)).descriptor, now_ms())
    inner = await tls_over(tunnel, server_context(descriptor), None, descriptor.tls_pin, 5)
    inner[1].transport.abort()
    assert (await relay.stats())["upstream_connections"] == 1
    assert len(tap.sent) > 500
    replayed = await exchange(host, port, tap.sent, tls=False)
    assert b"HTTP/1.1 101" not in replayed

    # Someone who learned the plaintext of a first request replays it inside fresh TLS.
    request = handshake(relay.link, server_key)
    first = await exchange(host, port, request, seconds=1)
    assert first.startswith(b"HTTP/1.1 101 ")
    again = await exchange(host, port, request)
    assert again.startswith(b"HTTP/1.1 200 OK\r\n") and b"Welcome to nginx!" in again

    stats = await relay.stats()
    assert stats["upstream_connections"] == 2  # the real client and the first request only
    assert stats["replays"] == 1 and stats["tls_failed"] >= 1


async def test_unknown_upstream_is_refused(world: World) -> None:
    relay, _ = await _setup(world)
    with pytest.raises(StageFailed) as caught:
        await open_relay(relay.link, os.urandom(32), now_ms(), 5)
    assert (caught.value.stage, caught.value.kind) == ("relay", "unknown_server")
    stats = await relay.stats()
    assert stats["upstream_unknown"] == 1 and stats["upstream_connections"] == 0


async def test_one_link_revoked_alone(world: World) -> None:
    relay, server_key = await _setup(world)
    folder = str(relay.data_dir)
    code, out, err = await run_cli(
        world.tmp / "nobody", "relay", "--data-dir", folder, "--new-link", passphrase=PASSPHRASE
    )
    assert code == 0, err
    second = decode_relay_link(out.strip())
    first = relay.link
    code, _, err = await run_cli(
        world.tmp / "nobody", "relay", "--data-dir", folder, "--revoke", first.link_id.hex(),
        passphrase=PASSPHRASE,
    )  # fmt: skip
    assert code == 0, err
    revoked = await exchange(relay.host, relay.port, handshake(first, server_key))
    assert revoked.startswith(b"HTTP/1.1 200 OK\r\n")
    tunnel = await open_relay(
        msgspec.structs.replace(second, addresses=first.addresses), server_key, now_ms(), 5
    )
    tunnel[1].transport.abort()
    stats = await relay.stats()
    assert stats["upstream_connections"] == 1 and stats["proofs_bad"] == 1


def _server_link(world: World) -> str:
    return world.servers[0].link
