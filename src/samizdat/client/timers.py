"""Disappearing messages: a timer per conversation, and deleting what expired (§6.2).

Either side of a 1:1 conversation, and any member of a group, may set the timer (as in
Signal, where any member may unless admins locked it; samizdat has no lock). The new
value travels as a ``MessageAction(timer=...)`` to everyone in the conversation and to our
other devices. From then on every message sent there carries ``expires_at`` = send time +
timer, inside the encryption (so every device deletes it then) and on its envelopes (so
the server deletes the mailbox entries then, delivered or not).

:func:`sweep` deletes what expired: history rows, per-message state, outbox copies; then
it checkpoints the WAL so no copy of the rows stays on disk. ``listen`` sweeps as it
goes and :func:`run_sweeper` sweeps every second while a client runs; a client that was
not running deletes on its first sweep, and expired messages are never shown meanwhile
(views sweep first).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from samizdat.client import msgstate as ms
from samizdat.client.actions import _conv, flush_blob_deletions, send_change
from samizdat.errors import LocalError
from samizdat.protocol.actions import MAX_TIMER_SECONDS, MessageAction

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = ["timer", "set_timer", "stamp", "sweep", "run_sweeper", "sweeping"]


def timer(client: Client, name: str, group: bool = False) -> int:
    """The conversation's disappearing-message timer in seconds (0: off)."""
    return ms.get_timer(client, _conv(client, name, group))


async def set_timer(client: Client, name: str, seconds: int, group: bool = False) -> None:
    """Set the timer for everyone in the conversation (0 turns it off)."""
    if not 0 <= seconds <= MAX_TIMER_SECONDS:
        raise LocalError(f"a timer is 0 to {MAX_TIMER_SECONDS} seconds")
    await send_change(client, _conv(client, name, group), MessageAction(timer=seconds))


def stamp(client: Client, conv_key: bytes, action: MessageAction | None) -> MessageAction | None:
    """``action`` with the expiry the conversation's timer gives a new message (if any)."""
    return ms.stamp(client, ms.Conv.from_key(conv_key), action)


def sweep(client: Client) -> int:
    """Delete every expired message now; returns how many."""
    return ms.sweep(client)


async def run_sweeper(client: Client, interval: float = 1.0) -> None:
    """Sweep every ``interval`` seconds until cancelled."""
    while True:
        if sweep(client):
            await flush_blob_deletions(client)
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def sweeping(client: Client, interval: float = 1.0) -> AsyncIterator[None]:
    """Run :func:`run_sweeper` for as long as the block runs (``listen``, ``ui``)."""
    task = asyncio.create_task(run_sweeper(client, interval), name="samizdat-sweeper")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
