"""Connection: request futures when the network breaks mid-request."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any, cast

import pytest

from samizdat.client.connection import Connection
from samizdat.errors import ConnectError
from samizdat.protocol import frames
from samizdat.protocol.descriptor import Descriptor


class _ResetDuringSend:
    """A channel whose connection is reset while a frame is being sent (the hostile
    network): the reader sees the reset first, then the send fails."""

    transport = "fake"

    def __init__(self) -> None:
        self._reset = asyncio.Event()

    async def send(self, data: bytes) -> None:
        self._reset.set()
        await asyncio.sleep(0.01)  # the read loop fails the pending request meanwhile
        raise ConnectError("connection reset")

    async def recv(self) -> bytes:
        await self._reset.wait()
        raise ConnectError("connection reset")

    async def close(self) -> None:
        pass


async def test_a_reset_during_a_send_leaves_no_unretrieved_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    welcome = cast(frames.Welcome, SimpleNamespace(descriptor=None))
    conn = Connection(_ResetDuringSend(), welcome, cast(Descriptor, None))
    with pytest.raises(ConnectError, match="reset"):
        await conn.call_any(frames.Ack(rid=0, up_to=1))
    await asyncio.sleep(0.01)
    gc.collect()  # a future whose exception nobody retrieved logs as it is collected
    await asyncio.sleep(0)
    never: list[Any] = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert never == []
    assert conn.closed
