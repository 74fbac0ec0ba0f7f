"""Pipelined deposits: answered in the order received, stored in the order received.

The session handles a connection's next frame while a deposit waits for its commit
(session.py ``_pipeline_deposit``). Driven in memory on the real SQLite store: a client
sends a random mix of good, duplicate and refused deposits and other frames without
waiting for any answer; every answer must come back in request order with the right
kind, and the mailbox must hold the stored envelopes in the order they were sent.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.protocol import frames as f
from samizdat.server.session import Session
from samizdat.server.store.sqlite import SqliteStore

from .helpers import memory_deps, registered_session

#: What the client sends, one per frame.
_ACTIONS = st.lists(
    st.sampled_from(["new", "new", "new", "duplicate", "bad_token", "stranger", "ack", "junk"]),
    min_size=1,
    max_size=40,
)


async def _drive(tmp: Path, actions: list[str], max_mailbox: int) -> None:
    store = SqliteStore(tmp / "db", max_mailbox_entries=max_mailbox)
    await store.open()
    try:
        deps = memory_deps(store, tmp, limits=f.Limits(max_mailbox_entries=max_mailbox))
        owner, user, token = await registered_session(deps)
        target = user.devices[0].device_id
        sender = Session(deps)
        await sender.receive_bytes(f.encode(f.Hello(versions=[1])))
        assert isinstance(await sender.next_frame(), f.Welcome)

        frames: list[bytes] = []
        expected: list[tuple[int, str]] = []  # (rid, kind of answer)
        sent_ids: list[bytes] = []  # msg_ids that should be stored, in order
        for rid, action in enumerate(actions, start=10):
            msg_id = rid.to_bytes(16, "big")
            if action == "duplicate" and sent_ids:
                msg_id = sent_ids[0]
            envelope = f.Envelope(device_id=target, msg_id=msg_id, body=b"x" * 10)
            if action in ("new", "duplicate"):
                frames.append(f.encode(f.Deposit(rid=rid, token=token, envelopes=[envelope])))
                if msg_id in sent_ids:
                    expected.append((rid, "duplicate"))
                elif len(sent_ids) >= max_mailbox:
                    expected.append((rid, "quota"))
                else:
                    sent_ids.append(msg_id)
                    expected.append((rid, "stored"))
            elif action == "bad_token":
                bad = f.Deposit(rid=rid, token=os.urandom(32), envelopes=[envelope])
                frames.append(f.encode(bad))
                expected.append((rid, "bad_token"))
            elif action == "stranger":
                stranger = f.Envelope(device_id=os.urandom(16), msg_id=msg_id, body=b"x")
                frames.append(f.encode(f.Deposit(rid=rid, token=token, envelopes=[stranger])))
                expected.append((rid, "unknown_device"))
            elif action == "ack":  # not logged in on this connection
                frames.append(f.encode(f.Ack(rid=rid, up_to=1)))
                expected.append((rid, "not_authenticated"))
            else:  # a frame that does not decode: its error carries the rid it could read
                frames.append(msgspec.msgpack.encode({"t": "nonsense", "rid": rid}))
                expected.append((rid, "bad_frame"))

        answers: list[f.ServerFrame | None] = []

        async def read() -> None:
            while len(answers) < len(expected):
                answers.append(await sender.next_frame())

        reader = asyncio.create_task(read())
        for data in frames:  # no waiting for answers: the client pipelines
            await sender.receive_bytes(data)
        await asyncio.wait_for(reader, 30)

        got: list[tuple[int | None, str]] = []
        for answer in answers:
            if isinstance(answer, f.DepositOk):
                kind = "stored" if answer.stored == 1 else "duplicate"
                got.append((answer.rid, kind))
            else:
                assert isinstance(answer, f.Error), answer
                got.append((answer.rid, answer.code))
        assert got == expected
        entries = await store.fetch(target, 0, 1000)
        assert [e.msg_id for e in entries] == sent_ids
        assert [e.seq for e in entries] == list(range(1, len(sent_ids) + 1))
        await sender.close()
        await owner.close()
    finally:
        await store.close()


@settings(max_examples=40, deadline=None)
@given(actions=_ACTIONS, max_mailbox=st.sampled_from([5, 1000]))
def test_pipelined_deposits_keep_their_order(actions: list[str], max_mailbox: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_drive(Path(tmp), actions, max_mailbox))


async def test_a_pipelining_connection_shares_commits(tmp_path: Path) -> None:
    """Sixteen deposits sent back to back are committed in far fewer transactions."""
    store = SqliteStore(tmp_path / "db")
    await store.open()
    try:
        deps = memory_deps(store, tmp_path, limits=f.Limits(max_mailbox_entries=1000))
        owner, user, token = await registered_session(deps)
        target = user.devices[0].device_id
        commits = store.commits
        for rid in range(100, 116):
            envelope = f.Envelope(device_id=target, msg_id=rid.to_bytes(16, "big"), body=b"x")
            await owner.receive_bytes(
                f.encode(f.Deposit(rid=rid, token=token, envelopes=[envelope]))
            )
        answers = [await asyncio.wait_for(owner.next_frame(), 10) for _ in range(16)]
        assert [getattr(a, "rid", None) for a in answers] == list(range(100, 116))
        assert all(isinstance(a, f.DepositOk) and a.stored == 1 for a in answers)
        assert store.commits - commits <= 2
        await owner.close()
    finally:
        await store.close()
