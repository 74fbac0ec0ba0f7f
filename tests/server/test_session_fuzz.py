"""The session driven in memory with hostile bytes: it answers only documented errors."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.errors import ErrorCode
from samizdat.protocol import frames as f
from samizdat.server.ratelimit import KeyedBuckets
from samizdat.server.session import Session
from samizdat.server.store.sqlite import SqliteStore

from .helpers import memory_deps, registered_session

_frame_like = st.dictionaries(
    st.sampled_from(["t", "rid", "token", "envelopes", "after", "up_to", "versions", "x"]),
    st.one_of(
        st.sampled_from(["hello", "deposit", "ack", "subscribe", "auth", "register"]),
        st.integers(-(2**40), 2**40),
        st.binary(max_size=40),
        st.lists(st.integers(0, 3), max_size=3),
        st.none(),
    ),
)
_messages = st.lists(
    st.one_of(st.binary(max_size=200), _frame_like.map(msgspec.msgpack.encode)), max_size=12
)


async def _drive(tmp: Path, messages: list[bytes]) -> list[f.ServerFrame | None]:
    store = SqliteStore(tmp / "db")
    await store.open()
    try:
        session = Session(
            memory_deps(store, tmp, token_buckets=KeyedBuckets(10, 10, 100), now_ms=lambda: 1)
        )
        out: list[f.ServerFrame | None] = []
        for data in [f.encode(f.Hello(versions=[1])), *messages]:
            await session.receive_bytes(data)
            while not session._outbox.empty():
                out.append(session._outbox.get_nowait())
        await session.close()
        return out
    finally:
        await store.close()


@settings(max_examples=60, deadline=None)
@given(messages=_messages)
def test_hostile_bytes_get_documented_errors(messages: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = asyncio.run(_drive(Path(tmp), messages))
    assert isinstance(out[0], f.Welcome)
    codes = {code.value for code in ErrorCode} - {"internal"}
    for frame in out[1:]:
        assert frame is None or (isinstance(frame, f.Error) and frame.code in codes), frame


async def test_session_repr_has_no_secrets(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    await store.open()
    try:
        deps = memory_deps(store, tmp_path)
        session, user, _ = await registered_session(deps)
        device = user.devices[0]
        for text in (repr(session), repr(deps), repr(deps.consumers), repr(store)):
            assert device.device_id.hex() not in text and str(device.device_id) not in text
            assert "authenticated=True" in repr(session)
        await session.close()
    finally:
        await store.close()
