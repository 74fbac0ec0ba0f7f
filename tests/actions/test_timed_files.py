"""A disappearing message with a file: the message and the blob go (issue 6)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path

from samizdat.client import actions, attachments, timers
from samizdat.client.app import Client
from tests.e2e.harness import PASSPHRASE, ServerProcess, scan_for
from tests.groups.helpers import befriend, drain, new_user


def _chunks(server: ServerProcess) -> list[bytes]:
    with contextlib.closing(sqlite3.connect(server.data_dir / "blobs.db")) as db:
        return [bytes(d) for (d,) in db.execute("SELECT data FROM blob_chunks")]


async def test_a_timed_file_is_gone_from_devices_and_server(
    tmp_path: Path, server: ServerProcess
) -> None:
    alice = await new_user(tmp_path, "alice", server.link)
    bob = await new_user(tmp_path, "bob", server.link)
    try:
        await befriend(alice, bob)
        await timers.set_timer(bob, "alice", 5)
        await drain(alice)
        assert timers.timer(alice, "bob") == 5
        path = tmp_path / "photo.bin"
        path.write_bytes(b"FILE-MARKER-" + os.urandom(300_000))
        msg_id = await attachments.send_file(alice, "bob", path, "look")
        chunks = _chunks(server)
        assert chunks, "the blob is on the server"
        await drain(bob)
        view = [v for v in actions.conversation(bob, "alice") if v.id == msg_id][0]
        assert view.attachment is not None and view.expires_at is not None
        got = await attachments.download(bob, msg_id, tmp_path / "got.bin")
        assert got.read_bytes() == path.read_bytes()
        got.unlink()
        await asyncio.sleep(max(0.0, view.expires_at / 1000 - time.time()) + 1.5)
        async with timers.sweeping(alice, interval=0.2), timers.sweeping(bob, interval=0.2):
            await asyncio.sleep(1.0)
        for client, peer in ((alice, "bob"), (bob, "alice")):
            assert msg_id not in {v.id for v in actions.conversation(client, peer)}
            assert attachments.attachment_of(client, msg_id) is None
        # The uploader deleted the blob: no chunk of its ciphertext is left on the server.
        assert _chunks(server) == []
        assert scan_for(server.data_dir, [c[1000:1064] for c in chunks]) == []
        await bob.close()
        bob = await Client.open(tmp_path / "bob", PASSPHRASE)
        assert msg_id not in {v.id for v in actions.conversation(bob, "alice")}
    finally:
        await alice.close()
        await bob.close()
