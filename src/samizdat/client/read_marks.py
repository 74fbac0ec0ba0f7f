"""How many incoming messages of each chat the user has seen (the UI's unread counts).

Kept in the encrypted local store (kind ``readmark``), so a count survives a restart of
``samizdat ui`` and is never on a server. A chat is named ``contact:NAME`` or
``group:NAME``; renaming a group starts its count again (at worst, old messages show
as unread once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = ["seen", "mark_seen"]

_KIND = "readmark"


def seen(client: Client, chat: str) -> int:
    """Incoming messages of ``chat`` the user has seen (0 if never opened)."""
    raw = client._store.get(_KIND, chat)
    return int.from_bytes(raw, "big") if raw else 0


def mark_seen(client: Client, chat: str, count: int) -> None:
    with client._store.locked():
        client._store.put(_KIND, chat, max(0, count).to_bytes(8, "big"))
