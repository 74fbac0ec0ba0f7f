"""Process-wide settings of the server's I/O stack, applied by the composition root.

asyncio's TLS layer (``asyncio.sslproto.SSLProtocol``) gives every connection its own
``max_size`` read buffer (256 KiB by default), allocated and zeroed up front. That buffer
is pure scratch space: the socket transport calls ``get_buffer()``, ``recv_into()`` it and
``buffer_updated()``, which copies the bytes into the connection's ``MemoryBIO`` at once,
all in one synchronous step of the event loop. So one buffer per thread can serve every
connection of that thread: :func:`tune_io` makes each new ``SSLProtocol`` use a shared
per-thread buffer instead of its own. Measured with bench/idle_connections.py, that
buffer was ~80 % (256 KiB) and later ~25 % (16 KiB) of what an idle connection cost.

``samizdat server`` runs on uvloop (app.py), whose TLS transport is its own (Cython, a
256 KiB buffer per connection of which only touched pages cost memory): this applies to
servers embedded on asyncio's loop (tests).
"""

from __future__ import annotations

import asyncio.sslproto
import threading
from typing import Any, Final

__all__ = ["TLS_READ_BUFFER", "shared_tls_buffer", "tune_io"]

#: asyncio's default read size: shared, so it costs one buffer per thread, not per
#: connection, and a busy connection drains its socket in few ``recv_into`` calls.
TLS_READ_BUFFER: Final = 256 * 1024

_scratch = threading.local()
_original_init = asyncio.sslproto.SSLProtocol.__init__


def shared_tls_buffer(size: int) -> tuple[bytearray, memoryview]:
    """This thread's scratch buffer of at least ``size`` bytes (and a view of it)."""
    current: tuple[bytearray, memoryview] | None = getattr(_scratch, "buffer", None)
    if current is None or len(current[0]) < size:
        buffer = bytearray(size)
        current = (buffer, memoryview(buffer))
        _scratch.buffer = current
    return current


def _init_sharing_buffer(self: Any, *args: Any, **kwargs: Any) -> None:
    # The original allocates bytearray(self.max_size): an instance attribute of 0 makes
    # that allocation empty, then the class's max_size applies again.
    self.max_size = 0
    try:
        _original_init(self, *args, **kwargs)
    finally:
        del self.max_size
    self._ssl_buffer, self._ssl_buffer_view = shared_tls_buffer(self.max_size)


def tune_io() -> None:
    """Make asyncio's TLS connections share one read buffer per thread (idempotent)."""
    protocol = asyncio.sslproto.SSLProtocol
    if protocol.__init__ is _init_sharing_buffer:
        return
    # Only where the private attributes are those this relies on (CPython 3.11-3.13).
    if "self._ssl_buffer = bytearray(self.max_size)" not in _source_of_init():
        return
    protocol.max_size = max(protocol.max_size, TLS_READ_BUFFER)
    protocol.__init__ = _init_sharing_buffer  # type: ignore[method-assign]


def _source_of_init() -> str:
    import inspect

    try:
        return inspect.getsource(_original_init)
    except (OSError, TypeError):
        return ""
