"""Unread counts (client/read_marks.py) stay right when seen messages expire."""

from __future__ import annotations

import asyncio
from pathlib import Path

from samizdat.client import read_marks, timers
from samizdat.client.app import Client
from tests.e2e.harness import ServerProcess
from tests.groups.helpers import befriend, drain, users


def _arrivals(client: Client, name: str) -> list[int]:
    return [i.received_at for i in client.history(name) if i.direction == "in"]


async def test_unread_counts_after_seen_messages_expire(
    tmp_path: Path, server: ServerProcess
) -> None:
    async with users(tmp_path, server.link, "alice", "bob") as (alice, bob):
        await befriend(alice, bob)
        chat = "contact:alice"
        assert read_marks.unread(bob, chat, _arrivals(bob, "alice")) == 1  # "hi bob"
        await timers.set_timer(alice, "bob", 2)
        for text in ("gone soon", "gone soon too"):
            await alice.send("bob", text)
        await drain(bob)
        assert read_marks.unread(bob, chat, _arrivals(bob, "alice")) == 3
        read_marks.mark_seen(bob, chat, _arrivals(bob, "alice"))
        assert read_marks.unread(bob, chat, _arrivals(bob, "alice")) == 0
        await asyncio.sleep(2.5)
        assert timers.sweep(bob) == 2
        await timers.set_timer(alice, "bob", 0)
        await alice.send("bob", "new after they expired")
        await alice.send("bob", "and another")
        await drain(bob)
        assert len(_arrivals(bob, "alice")) == 3  # "hi bob" and the two new ones
        # Counting seen messages would say 3 - 3 = 0 here.
        assert read_marks.unread(bob, chat, _arrivals(bob, "alice")) == 2
        read_marks.mark_seen(bob, chat, _arrivals(bob, "alice"))
        assert read_marks.unread(bob, chat, _arrivals(bob, "alice")) == 0
