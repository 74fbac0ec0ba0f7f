"""Which incoming messages of each chat the user has seen (the UI's unread counts).

Kept in the encrypted local store (kind ``readat``), so a count survives a restart of
``samizdat ui`` and is never on a server. A chat is named ``contact:NAME`` or
``group:NAME``; renaming a group starts its count again (at worst, old messages show
as unread once).

The mark is the arrival time (``received_at``) of the newest incoming message seen, and
how many seen messages arrived in that same millisecond: unread are those that arrived
after it. (A count of seen messages would under-count once seen messages expire or are
deleted: new ones would hide behind the old count.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = ["unread", "mark_seen"]

_KIND = "readat"


def _mark(client: Client, chat: str) -> tuple[int, int]:
    raw = client._store.get(_KIND, chat)
    if raw is None:
        return 0, 0
    at, same = msgspec.msgpack.decode(raw, type=tuple[int, int])
    return at, same


def unread(client: Client, chat: str, received: Iterable[int]) -> int:
    """How many of the incoming messages that arrived at ``received`` (ms) are unseen."""
    at, same = _mark(client, chat)
    times = list(received)
    return sum(1 for t in times if t > at) + max(0, sum(1 for t in times if t == at) - same)


def mark_seen(client: Client, chat: str, received: Iterable[int]) -> None:
    """Everything that arrived at ``received`` (the chat's incoming messages) is seen."""
    times = list(received)
    at = max(times, default=0)
    with client._store.locked():
        old_at, old_same = _mark(client, chat)
        if at < old_at:
            return  # the newest seen ones expired meanwhile: the mark stays
        same = sum(1 for t in times if t == at)
        if at == old_at:
            same = max(same, old_same)
        client._store.put(_KIND, chat, msgspec.msgpack.encode((at, same)))
