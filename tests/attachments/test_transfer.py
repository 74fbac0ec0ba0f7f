"""Must show (issue 6): a 50 MB file through a connection cut three times mid-upload
arrives intact with client and server memory well under its size; a file over HTTPS
long-polling and one through a relay arrive intact; the server's files hold no plaintext."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

from samizdat.client import attachments
from samizdat.transport import TransportOptions
from tests.censorship.conftest import World, collect
from tests.censorship.net import Middlebox, free_port
from tests.relay.conftest import start_relay, upstream

from .conftest import MARKER, make_file, pair, sha256_of

BIG = 50 * 1000 * 1000
MIB = 1 << 20


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _scan(folder: Path) -> None:
    """No byte string of the plaintext in anything the server wrote."""
    scanned = 0
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            scanned += len(data)
            assert MARKER not in data, path.name
    assert scanned > BIG, "the blob is not in the data dir"


async def test_50_mb_through_three_cuts_memory_stays_low(world: World, tmp_path: Path) -> None:
    port = free_port("127.0.0.2")
    box = world.add(await Middlebox("127.0.0.7", port, ("127.0.0.2", port)).start())
    server = await world.server("127.0.0.2", "--public-host", "127.0.0.7", port=port)
    assert server.proc is not None
    pid = server.proc.pid
    alice, bob = await pair(world, server.link, TransportOptions(stagger=0.1))
    digest = make_file(tmp_path / "big.bin", BIG)
    rss_before = _status_kib(pid, "VmRSS")

    cuts: list[int] = []

    def cut_at_quarters(done: int, total: int) -> None:
        if len(cuts) < 3 and done >= total * (len(cuts) + 1) // 4:
            cuts.append(done)
            box.reset_all()  # every open connection through the box dies mid-stream

    tracemalloc.start()
    started = time.monotonic()
    msg_id = await attachments.send_file(
        bob, "alice", tmp_path / "big.bin", "fifty", progress=cut_at_quarters
    )
    upload_s = time.monotonic() - started
    _, upload_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    assert len(cuts) == 3
    [got] = await collect(alice, 1, wait=30)
    assert got.id == msg_id and got.attachment is not None and got.attachment.size == BIG
    started = time.monotonic()
    out = await attachments.download(alice, msg_id, tmp_path / "big.out")
    download_s = time.monotonic() - started
    _, download_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    server_peak = _status_kib(pid, "VmHWM")

    assert sha256_of(out) == digest
    assert box.connections >= 5, "the cuts did not force reconnections"
    # Streamed: the client never held more than a few chunks, the server's peak resident
    # memory grew by far less than the file (it was measured before the upload).
    assert upload_peak < 8 * MIB, upload_peak
    assert download_peak < 8 * MIB, download_peak
    growth_mib = (server_peak - rss_before) / 1024
    assert growth_mib < 25, f"server peak RSS grew {growth_mib:.0f} MiB"
    print(
        f"50 MB, 3 cuts: upload {upload_s:.1f} s, download {download_s:.1f} s,"
        f" client peak {upload_peak / MIB:.1f}/{download_peak / MIB:.1f} MiB,"
        f" server peak RSS growth {growth_mib:.1f} MiB"
    )
    _scan(server.data_dir)


async def test_over_long_polling(world: World, tmp_path: Path) -> None:
    server = await world.server("127.0.0.2")
    options = TransportOptions(transports=("poll",), stagger=0.1)
    alice, bob = await pair(world, server.link, options)
    digest = make_file(tmp_path / "poll.bin", 3 * MIB + 7)
    msg_id = await attachments.send_file(bob, "alice", tmp_path / "poll.bin")
    await collect(alice, 1, wait=20)
    out = await attachments.download(alice, msg_id, tmp_path / "poll.out")
    assert sha256_of(out) == digest
    for client in (alice, bob):
        conn = await client.route()
        assert conn.candidate is not None and conn.candidate.transport == "poll"


async def test_through_a_relay(world: World, tmp_path: Path) -> None:
    port = free_port("127.0.0.2")
    box = world.add(await Middlebox("127.0.0.7", port, ("127.0.0.2", port)).start())
    box.block()  # the direct route is blocked, as a censor does
    server = await world.server("127.0.0.2", "--public-host", "127.0.0.7", port=port)
    relay = await start_relay(
        world, "127.0.0.9", free_port("127.0.0.9"),
        "--upstream", upstream(server.link, "127.0.0.2", port),
    )  # fmt: skip
    options = TransportOptions(relays=(relay.link,), stagger=0.1)
    alice, bob = await pair(world, server.link, options)
    digest = make_file(tmp_path / "relay.bin", 3 * MIB + 7)
    msg_id = await attachments.send_file(bob, "alice", tmp_path / "relay.bin")
    await collect(alice, 1, wait=20)
    out = await attachments.download(alice, msg_id, tmp_path / "relay.out")
    assert sha256_of(out) == digest
    for client in (alice, bob):
        conn = await client.route()
        assert conn.candidate is not None and conn.candidate.route.kind == "relay"
    forwarded = relay.record.read_bytes()
    assert len(forwarded) > 6 * MIB  # the file went up and down through the relay
    assert MARKER not in forwarded
