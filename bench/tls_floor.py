"""What OpenSSL alone costs per TLS connection: the floors under two of issue 7's targets.

- Memory: "≤ 15 KB of server memory per idle connection". The heap OpenSSL holds for the
  server side of one connection after its handshake (the ``SSL`` object, its session,
  cipher contexts, transcript hash and the two memory BIOs), before any socket, WebSocket
  or session state.
- CPU: "10,000 reconnecting clients back within 10 s". The CPU one full handshake takes
  on each side (the server's, and a client's that pins the key without a chain check as
  the storm's load generator does): a one-core generator cannot open more than 1 / that
  handshakes per second, whatever the server does.

Makes a samizdat server identity in a temporary directory and the server's TLS context
the way ``samizdat server`` does (its P-256 leaf and key, no session tickets), then
completes ``--connections`` handshakes in memory (``ssl.MemoryBIO`` pairs, as uvloop's TLS
transport drives OpenSSL), one small record each way, and keeps the server side of each.
Heap: glibc's in-use bytes (``mallinfo2``); CPU: this thread's CPU time around each side's
calls. Each protocol runs in a fresh process. No network: nothing binds or connects.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openloop import rss_kib
from samizdat.server.identity import load_or_create_identity


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back (main arena and mmaps)."""
    info = _libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


Kept = tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]


class _Clock:
    """CPU time spent in each side's OpenSSL calls."""

    def __init__(self) -> None:
        self.server = 0.0
        self.client = 0.0


def _step(side: ssl.SSLObject) -> None:
    try:
        side.do_handshake()
    except ssl.SSLWantReadError:
        pass


def _connect(server: ssl.SSLContext, client: ssl.SSLContext, clock: _Clock) -> Kept:
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    t0 = time.thread_time()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    t1 = time.thread_time()
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    clock.server += t1 - t0
    clock.client += time.thread_time() - t1
    for _ in range(4):
        t0 = time.thread_time()
        _step(c)
        t1 = time.thread_time()
        s_in.write(c_out.read())
        t2 = time.thread_time()
        _step(s)
        clock.client += t1 - t0
        clock.server += time.thread_time() - t2
        c_in.write(s_out.read())
    c.write(b"hello")
    s_in.write(c_out.read())
    s.read(64)
    s.write(b"welcome")
    c_in.write(s_out.read())
    c.read(64)
    return s, s_in, s_out


def measure(
    server: ssl.SSLContext, client: ssl.SSLContext, count: int
) -> tuple[float, float, float, float]:
    """(heap KiB, RSS KiB) per kept server-side connection, (server, client) µs each."""
    warm = _Clock()
    kept = [_connect(server, client, warm) for _ in range(50)]  # allocator and caches
    gc.collect()
    heap0, rss0 = heap_in_use(), rss_kib(os.getpid())
    clock = _Clock()
    kept += [_connect(server, client, clock) for _ in range(count)]
    gc.collect()
    heap1, rss1 = heap_in_use(), rss_kib(os.getpid())
    del kept
    return (
        (heap1 - heap0) / count / 1024,
        (rss1 - rss0) / count,
        clock.server / count * 1e6,
        clock.client / count * 1e6,
    )


_PROTOCOLS = {"1.3": ssl.TLSVersion.TLSv1_3, "1.2": ssl.TLSVersion.TLSv1_2}


def _one(protocol: str, count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="samizdat-tlsmem-") as tmp:
        identity = load_or_create_identity(Path(tmp), ["127.0.0.1", "localhost"])
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(identity.cert_path, identity.key_path)
        server.num_tickets = 0
        server.maximum_version = _PROTOCOLS[protocol]
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        heap, rss, server_us, client_us = measure(server, client, count)
        print(
            f"  TLS {protocol} {count:>11,} {heap:>14.2f} {rss:>13.2f} "
            f"{server_us:>10,.0f} {client_us:>10,.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--protocol", choices=sorted(_PROTOCOLS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.protocol:
        _one(args.protocol, args.connections)
        return
    print(
        f"{ssl.OPENSSL_VERSION}; Python {sys.version.split()[0]}; the server context as "
        "`samizdat server` builds it (P-256 leaf, no session tickets); one process each"
    )
    print(
        f"{'protocol':>9} {'connections':>11} {'heap KiB/conn':>14} {'RSS KiB/conn':>13} "
        f"{'server µs':>10} {'client µs':>10}"
    )
    sys.stdout.flush()
    for protocol in ("1.3", "1.2"):
        # A fresh process each, so that one's freed memory does not hide the other's RSS.
        command = [sys.executable, __file__, "--protocol", protocol]
        subprocess.run([*command, "--connections", str(args.connections)], check=True)
    print(
        "targets: 15 KB = 14.65 KiB of server memory per idle connection; 10,000 reconnects "
        "in 10 s = 1,000 µs per reconnect on each side's one core"
    )


if __name__ == "__main__":
    main()
