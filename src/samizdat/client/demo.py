"""``samizdat demo``: a local server, Alice and Bob, and what the server actually stores.

Starts ``python -m samizdat server`` on 127.0.0.1 (port 0) in a temporary folder, creates
two in-process :class:`~samizdat.client.app.Client` objects, runs the first-contact flow
(Alice writes from Bob's invite, Bob sees a request and accepts it, both answer), and
prints side by side what Bob read and what the server's SQLite database held for the
same message id: only a size and opaque bytes. Finally it stops the server and checks
that no message text occurs anywhere in the server's files. Needs only loopback.

The server's database is opened read-only and its mailbox table found by inspecting
the schema (a table with ``msg_id`` and ``body`` columns), so the demo depends on no
server module.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from samizdat.client.app import Client, Received

__all__ = ["run_demo", "StoredEnvelope", "stored_envelopes"]

_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class StoredEnvelope:
    size: int
    head: bytes


def stored_envelopes(db: Path) -> dict[str, StoredEnvelope]:
    """Mailbox entries in a server database, oldest first: size and last 16 bytes.

    Keyed by the envelope's msg_id (hex), which is random per envelope: the server cannot
    link it to the message id the users see, so the demo matches rows by when they appeared.
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found: dict[str, StoredEnvelope] = {}
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
            if {"msg_id", "body"} <= columns:
                order = " ORDER BY received_at, seq" if {"received_at", "seq"} <= columns else ""
                for msg_id, body in conn.execute(f'SELECT msg_id, body FROM "{table}"{order}'):
                    found[bytes(msg_id).hex()] = StoredEnvelope(len(body), bytes(body[-16:]))
        return found
    finally:
        conn.close()


def _new_rows(db: Path, before: dict[str, StoredEnvelope]) -> list[StoredEnvelope]:
    return [row for key, row in stored_envelopes(db).items() if key not in before]


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _start_server(data_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "samizdat",
        "server",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), _START_TIMEOUT)
    except TimeoutError:
        line = b""
    link = line.decode().strip()
    if not link.startswith("samizdat:server/"):
        await _stop_server(process)
        raise RuntimeError("the demo server did not start")
    return process, link


async def _stop_server(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _read(client: Client, count: int) -> list[Received]:
    return [m async for m in client.listen(count=count, timeout=10)]


def _side_by_side(read: list[Received], stored: list[StoredEnvelope]) -> None:
    _say(f"  {'what Bob read':<34} | what the server stored for Bob's device")
    _say(f"  {'-' * 34}-+-{'-' * 50}")
    for index, message in enumerate(read):
        envelope = stored[index] if index < len(stored) else None
        right = (
            "(not captured)"
            if envelope is None
            else f"{envelope.size:6d} bytes  ...{envelope.head.hex()}"
        )
        left = f"{message.sender}: {message.text}"[:34]
        _say(f"  {left:<34} | {right}")


async def run_demo(keep: bool = False) -> int:
    """Run the demo; 0 if the server's files hold no message text, else 1."""
    root = Path(tempfile.mkdtemp(prefix="samizdat-demo-"))
    server_dir = root / "server"
    texts: list[str] = []
    try:
        _say(f"starting a local server in {server_dir} ...")
        process, link = await _start_server(server_dir)
        try:
            ok = await _conversation(root, link, server_dir / "server.db", texts)
        finally:
            await _stop_server(process)
        _say()
        _say("server stopped; scanning every server file for the message texts ...")
        leaks = _scan(server_dir, texts)
        for path, text in leaks:
            _say(f"  LEAK: {text!r} found in {path.name}")
        if leaks or not ok:
            _say("FAILED")
            return 1
        _say(f"  none of the {len(texts)} texts occurs in the server's files: only ciphertext.")
        return 0
    finally:
        if keep:
            _say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


async def _conversation(root: Path, link: str, db: Path, texts: list[str]) -> bool:
    passphrase = secrets.token_hex(16)
    stored: list[StoredEnvelope] = []
    async with (
        await Client.create(root / "alice", passphrase, link, "Alice") as alice,
        await Client.create(root / "bob", passphrase, link, "Bob") as bob,
    ):
        _say("created Alice and Bob (each an Olm account, a user key and a sealing key)")
        invite = await bob.invite()
        _say(f"Bob's invite link: {invite[:48]}... ({len(invite)} characters)")
        await alice.add_contact(invite, "Bob")
        _say("Alice added Bob from the invite")
        _say()

        first = ["Hi Bob, it's Alice. Found you through your invite!", "Are you there?"]
        before = stored_envelopes(db)
        for text in first:
            texts.append(text)
            await alice.send("Bob", text)
        stored += _new_rows(db, before)
        got = await _read(bob, len(first))
        for message in got:
            _say(f"Bob received from {message.sender!r} (contact request: {message.request})")
        await bob.accept("Alice")
        _say("Bob accepted Alice's request")

        reply = ["Hello Alice! Yes, I'm here.", "The server only sees noise."]
        for text in reply:
            texts.append(text)
            await bob.send("Alice", text)
        got_alice = await _read(alice, len(reply))

        last = "Great, talk soon. Sealed, padded, encrypted."
        texts.append(last)
        before = stored_envelopes(db)
        await alice.send("Bob", last)
        stored += _new_rows(db, before)
        got += await _read(bob, 1)

        _say()
        _side_by_side(got, stored)
        _say()
        for message in got_alice:
            _say(f"  Alice read: {message.sender}: {message.text}")
        _say()
        _say(f"safety number (both sides see the same):\n{_grouped(bob.safety_number('Alice'))}")
        same = bob.safety_number("Alice") == alice.safety_number("Bob")
        complete = len(got) == len(first) + 1 and len(got_alice) == len(reply)
        if not (same and complete):
            _say("unexpected: a message was missing or the safety numbers differ")
        return same and complete


def _grouped(number: str) -> str:
    groups = [number[i : i + 5] for i in range(0, len(number), 5)]
    return "\n".join("  " + " ".join(groups[i : i + 6]) for i in range(0, len(groups), 6))


def _scan(folder: Path, texts: list[str]) -> list[tuple[Path, str]]:
    leaks: list[tuple[Path, str]] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            leaks += [(path, t) for t in texts if t.encode() in data]
    return leaks
