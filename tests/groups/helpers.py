"""Helpers for multi-device and group tests: users, friendships, linked devices."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from samizdat.client import devices
from samizdat.client.app import Client, Received
from samizdat.crypto.sas import SasCode
from tests.e2e.harness import PASSPHRASE

__all__ = ["befriend", "drain", "link", "new_user", "users", "Codes"]


async def new_user(root: Path, name: str, server_link: str) -> Client:
    return await Client.create(root / name, PASSPHRASE, server_link, name)


@contextlib.asynccontextmanager
async def users(root: Path, server_link: str, *names: str) -> AsyncIterator[list[Client]]:
    """New users, one per name, closed on the way out."""
    clients: list[Client] = []
    try:
        for name in names:
            clients.append(await new_user(root, name, server_link))
        yield clients
    finally:
        for client in clients:
            await client.close()


async def drain(client: Client, idle: float = 1.0) -> list[Received]:
    """Process everything waiting in the mailbox; returns the messages shown."""
    got: list[Received] = []
    async for message in client.listen(timeout=idle):
        got.append(message)
    return got


async def befriend(a: Client, b: Client) -> None:
    """Mutual contacts under each other's names; both have answered once."""
    await b.add_contact(await a.invite(), a.name)
    await b.send(a.name, f"hi {a.name}")
    await drain(a)
    await a.accept(b.name)
    await a.send(b.name, f"hi {b.name}")
    await drain(b)


class Codes:
    """Records the SAS code each side was asked to confirm."""

    def __init__(self, answer: bool = True) -> None:
        self.seen: list[SasCode] = []
        self.answer = answer

    async def __call__(self, code: SasCode) -> bool:
        self.seen.append(code)
        return self.answer


async def link(existing: Client, home: Path) -> tuple[Client, SasCode, SasCode]:
    """Link a new device in ``home`` to ``existing``'s user; both confirm the code."""
    offer = await devices.start_link(existing)
    old_codes, new_codes = Codes(), Codes()
    waiting = asyncio.create_task(devices.finish_link(existing, offer, old_codes, 30.0))
    new = await devices.join(home, PASSPHRASE, offer.code, new_codes, 30.0)
    await waiting
    return new, old_codes.seen[0], new_codes.seen[0]
