"""Process-wide settings of the server's I/O stack, applied by the composition root.

asyncio's TLS layer gives every connection a 256 KiB read buffer
(``asyncio.sslproto.SSLProtocol.max_size``), allocated and zeroed up front: measured
with bench/idle_connections.py, that was ~80 % of the memory an idle connection costs.
One TLS record carries at most 16 KiB of plaintext, so a buffer of one record loses
nothing but a few extra ``read`` calls for large frames.
"""

from __future__ import annotations

import asyncio.sslproto
from typing import Final

__all__ = ["TLS_READ_BUFFER", "tune_io"]

#: One maximal TLS record (RFC 8446 §5.1: 2^14 bytes of plaintext) and some slack.
TLS_READ_BUFFER: Final = 16 * 1024 + 512


def tune_io() -> None:
    """Shrink asyncio's per-connection TLS read buffer (idempotent)."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
