"""A returning device: hello, auth, subscribe, its backlog (session.py, protocol §5.2).

Driven in memory on the real SQLite store, with a sink as the WebSocket front gives one.
The Ok to a Subscribe and the backlog's first Deliver frames are handed to the sink in
the same step (the front then writes them together); the delivery task that follows
must still deliver everything, in order and once: a backlog longer than one Deliver, and
deposits made right after the Subscribe.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.errors import ErrorCode
from samizdat.protocol import frames as f
from samizdat.protocol import limits
from samizdat.server.session import Session, SessionDeps
from samizdat.server.store.sqlite import SqliteStore

from .helpers import Device, memory_deps, registered_session

_LIMITS = f.Limits(max_mailbox_entries=1000)


async def _returning(
    deps: SessionDeps, device: Device, sink: list[f.ServerFrame | None]
) -> Session:
    """A new connection of ``device``: hello and auth answered, nothing else sent."""
    session = Session(deps, sink=sink.append)
    await session.receive_bytes(f.encode(f.Hello(versions=[1])))
    welcome = sink.pop()
    assert isinstance(welcome, f.Welcome)
    proof = device.proof(deps.server_key, welcome.nonce)
    await session.receive_bytes(f.encode(f.Auth(rid=1, device_id=device.device_id, proof=proof)))
    assert isinstance(sink.pop(), f.AuthOk)
    return session


async def _deposit(owner: Session, token: bytes, device: Device, rid: int, n: int) -> None:
    envelope = f.Envelope(device_id=device.device_id, msg_id=n.to_bytes(16, "big"), body=b"b")
    await owner.receive_bytes(f.encode(f.Deposit(rid=rid, token=token, envelopes=[envelope])))
    assert isinstance(await asyncio.wait_for(owner.next_frame(), 10), f.DepositOk)


def _seqs(frames: list[f.ServerFrame | None]) -> list[int]:
    return [e.seq for fr in frames if isinstance(fr, f.Deliver) for e in fr.entries]


async def test_ok_and_backlog_reach_the_sink_in_one_step(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    await store.open()
    try:
        deps = memory_deps(store, tmp_path, limits=_LIMITS)
        owner, user, token = await registered_session(deps)
        device = user.devices[0]
        for n in range(3):
            await _deposit(owner, token, device, 10 + n, n)
        await owner.close()
        sink: list[f.ServerFrame | None] = []
        session = await _returning(deps, device, sink)
        await session.receive_bytes(f.encode(f.Subscribe(rid=2, after=0)))
        # No turn of the loop in between: the Deliver is there when the Ok is.
        assert [type(fr) for fr in sink] == [f.Ok, f.Deliver]
        assert _seqs(sink) == [1, 2, 3]
        await session.close()
    finally:
        await store.close()


async def test_auth_of_an_unknown_device_or_with_a_wrong_proof_is_refused(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "db")
    await store.open()
    try:
        deps = memory_deps(store, tmp_path, limits=_LIMITS)
        owner, user, _ = await registered_session(deps)
        await owner.close()
        device = user.devices[0]
        for device_id, good_proof, code in (
            (os.urandom(len(device.device_id)), True, ErrorCode.UNKNOWN_DEVICE),
            (device.device_id, False, ErrorCode.BAD_SIGNATURE),
        ):
            sink: list[f.ServerFrame | None] = []
            session = Session(deps, sink=sink.append)
            await session.receive_bytes(f.encode(f.Hello(versions=[1])))
            welcome = sink.pop()
            assert isinstance(welcome, f.Welcome)
            nonce = welcome.nonce if good_proof else os.urandom(32)
            proof = device.proof(deps.server_key, nonce)
            await session.receive_bytes(f.encode(f.Auth(rid=1, device_id=device_id, proof=proof)))
            (answer,) = sink
            assert isinstance(answer, f.Error) and answer.code == code
            assert not session.authenticated
            await session.close()
    finally:
        await store.close()


async def _drain_after_return(tmp: Path, backlog: int, after_subscribe: int, after: int) -> None:
    store = SqliteStore(tmp / "db")
    await store.open()
    try:
        deps = memory_deps(store, tmp, limits=_LIMITS)
        owner, user, token = await registered_session(deps)
        device = user.devices[0]
        for n in range(backlog):
            await _deposit(owner, token, device, 10 + n, n)
        sink: list[f.ServerFrame | None] = []
        session = await _returning(deps, device, sink)
        await session.receive_bytes(f.encode(f.Subscribe(rid=2, after=after)))
        for n in range(backlog, backlog + after_subscribe):
            await _deposit(owner, token, device, 10 + n, n)
        expected = list(range(after + 1, backlog + after_subscribe + 1))
        async with asyncio.timeout(10):
            while len(_seqs(sink)) < len(expected):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # nothing more may come
        assert _seqs(sink) == expected
        assert isinstance(sink[0], f.Ok)
        await session.close()
        await owner.close()
    finally:
        await store.close()


@settings(max_examples=15, deadline=None)
@given(
    backlog=st.integers(0, 2 * limits.MAX_ENTRIES_PER_DELIVER + 1),
    after_subscribe=st.integers(0, 3),
    data=st.data(),
)
def test_a_returning_device_gets_each_entry_once_in_order(
    backlog: int, after_subscribe: int, data: st.DataObject
) -> None:
    after = data.draw(st.integers(0, backlog), label="after")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_drain_after_return(Path(tmp), backlog, after_subscribe, after))
