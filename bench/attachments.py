"""Upload and download throughput of a large attachment, direct and through a relay, and
peak memory of client and server.

    .venv/bin/python bench/attachments.py [--mb 50] [--repeat 3]

Real processes on loopback: one ``samizdat server`` (SQLite) and one ``samizdat relay``.
Two pairs of real clients (in this process): one pair reaches the server directly over
WebSocket/TLS; the other's only endpoint refuses connections, so its route is the relay
(TLS inside TLS). For each route Bob sends a file of ``--mb`` MB (``send_file``: hash,
encrypt, upload in 128 KiB chunks, 4 in flight) and Alice downloads it (read, decrypt,
SHA-256 check), ``--repeat`` times; reported are the median MB/s (1 MB = 10^6 bytes), the
client's peak traced Python memory (tracemalloc) during each transfer, and the server's
and relay's peak resident memory (VmHWM) growth over their resident size before the first
transfer. Figures on a shared machine are noisy: compare routes within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samizdat.client import attachments  # noqa: E402
from samizdat.client.app import Client  # noqa: E402
from samizdat.transport import TransportOptions  # noqa: E402
from tests.censorship.net import Middlebox, ServerProc, free_port  # noqa: E402
from tests.relay.conftest import RelayProc, upstream  # noqa: E402

PASS = "bench passphrase"
MIB = 1 << 20


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def _make_file(path: Path, size: int) -> bytes:
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, MIB))
            fh.write(block)
            digest.update(block)
            left -= len(block)
    return digest.digest()


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(MIB):
            digest.update(block)
    return digest.digest()


async def _pair(tmp: Path, tag: str, link: str, options: TransportOptions) -> tuple[Client, Client]:
    alice = await Client.create(tmp / f"alice-{tag}", PASS, link, "alice", options)
    bob = await Client.create(tmp / f"bob-{tag}", PASS, link, "bob", options)
    await bob.add_contact(await alice.invite(), "alice")
    await bob.send("alice", "hi")
    async for _ in alice.listen(count=1, timeout=10):
        pass
    return alice, bob


async def _transfer(
    alice: Client, bob: Client, path: Path, size: int, digest: bytes, out: Path
) -> tuple[float, float, float, float]:
    """(upload MB/s, download MB/s, upload peak MiB, download peak MiB)."""
    tracemalloc.start()
    start = time.perf_counter()
    msg_id = await attachments.send_file(bob, "alice", path)
    up = time.perf_counter() - start
    _, up_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    async for _ in alice.listen(count=1, timeout=30):
        pass
    _remove(out)
    start = time.perf_counter()
    await attachments.download(alice, msg_id, out)
    down = time.perf_counter() - start
    _, down_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if _sha256(out) != digest:
        raise RuntimeError("the downloaded file differs")
    att = attachments.attachment_of(bob, msg_id)
    assert att is not None
    await attachments.delete_blob(bob, att)  # keep the quota free for the next round
    return size / up / 1e6, size / down / 1e6, up_peak / MIB, down_peak / MIB


async def main(mb: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        port = free_port("127.0.0.2")
        box = await Middlebox("127.0.0.7", port, ("127.0.0.2", port)).start()
        box.block()  # the relay pair's only endpoint: refused
        direct = ServerProc(tmp / "direct-server", "127.0.0.3", free_port("127.0.0.3"))
        blocked = ServerProc(tmp / "server", "127.0.0.2", port, "--public-host", "127.0.0.7")
        await direct.start()
        await blocked.start()
        relay = RelayProc(
            tmp / "relay", "127.0.0.9", free_port("127.0.0.9"),
            "--upstream", upstream(blocked.link, "127.0.0.2", port), record=False,
        )  # fmt: skip
        await relay.start()
        clients: list[Client] = []
        try:
            path = tmp / "file.bin"
            digest = _make_file(path, mb * 1_000_000)
            routes = {
                "direct": (direct, await _pair(tmp, "d", direct.link, TransportOptions())),
                "relay": (
                    blocked,
                    await _pair(
                        tmp, "r", blocked.link, TransportOptions(relays=(relay.link,), stagger=0.1)
                    ),
                ),
            }
            for _, (_, pair) in routes.items():
                clients.extend(pair)
            for name, (server, (alice, bob)) in routes.items():
                assert server.proc is not None and relay.proc is not None
                base = _status_kib(server.proc.pid, "VmRSS")
                relay_base = _status_kib(relay.proc.pid, "VmRSS")
                runs = [
                    await _transfer(alice, bob, path, mb * 1_000_000, digest, tmp / f"out-{name}")
                    for _ in range(repeat)
                ]
                growth = (_status_kib(server.proc.pid, "VmHWM") - base) / 1024
                relay_growth = (_status_kib(relay.proc.pid, "VmHWM") - relay_base) / 1024
                up = statistics.median(r[0] for r in runs)
                down = statistics.median(r[1] for r in runs)
                print(
                    f"{name:6} {mb} MB: upload {up:6.1f} MB/s, download {down:6.1f} MB/s"
                    f" (median of {repeat}); client peak {max(r[2] for r in runs):.1f} MiB up,"
                    f" {max(r[3] for r in runs):.1f} MiB down; server peak RSS +{growth:.1f} MiB"
                    + (f"; relay peak RSS +{relay_growth:.1f} MiB" if name == "relay" else "")
                )
        finally:
            for client in clients:
                await client.close()
            await relay.close()
            await direct.stop()
            await blocked.stop()
            await box.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.mb, args.repeat))
