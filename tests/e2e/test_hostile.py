"""Bad input gets its documented error; the server and other users carry on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

import msgspec
import pytest

from samizdat.client.app import Client
from samizdat.errors import ErrorCode
from samizdat.protocol import frames as f
from samizdat.protocol import limits
from tests.e2e.harness import PASSPHRASE, ServerProcess
from tests.e2e.raw import RawConnection, RawDevice


async def _registered(link: str) -> tuple[RawConnection, RawDevice, bytes]:
    """A raw device, logged in on a fresh connection, with a delivery token."""
    conn = await RawConnection.open(link)
    device = RawDevice.generate()
    assert isinstance(await conn.register(device), f.AuthOk)
    token = secrets.token_bytes(32)
    assert isinstance(await conn.call(f.AddToken(rid=conn.rid(), token=token)), f.Ok)
    return conn, device, token


def _error(frame: f.ServerFrame) -> str:
    assert isinstance(frame, f.Error), frame
    return frame.code


async def _chat_round(alice: Client, bob: Client, n: int) -> None:
    await alice.send("bob", f"still here {n}")
    got = [m async for m in bob.listen(count=1, timeout=20)]
    assert [m.text for m in got] == [f"still here {n}"]


async def test_each_bad_input_gets_its_error_and_others_carry_on(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await Client.create(tmp_path / "alice", PASSPHRASE, server.link, "alice")
    bob = await Client.create(tmp_path / "bob", PASSPHRASE, server.link, "bob")
    await alice.add_contact(await bob.invite(), "bob")
    await _chat_round(alice, bob, 0)
    victim_conn, victim, token = await _registered(server.link)

    # A malformed frame.
    conn = await RawConnection.open(server.link)
    await conn.send_raw(b"\xc1 not msgpack")
    assert _error(await conn.recv()) == ErrorCode.BAD_FRAME
    await _chat_round(alice, bob, 1)

    # A frame above the size limit.
    conn = await RawConnection.open(server.link)
    await conn.send_raw(b"\x00" * (limits.MAX_FRAME + 1))
    assert _error(await conn.recv()) == ErrorCode.FRAME_TOO_LARGE
    await _chat_round(alice, bob, 2)

    # A registration whose proof is signed by another key.
    conn = await RawConnection.open(server.link)
    forger = RawDevice.generate()
    bad = f.Register(
        rid=conn.rid(),
        device=forger.keys,
        devices=forger.devices,
        proof=RawDevice.generate().device.signing.sign(b"samizdat/auth/v1", b"x"),
    )
    assert _error(await conn.call(bad)) == ErrorCode.BAD_SIGNATURE
    # A device list whose signature was tampered with.
    tampered = msgspec.structs.replace(forger.devices, signature=bytes(64))
    bad2 = f.Register(
        rid=conn.rid(), device=forger.keys, devices=tampered, proof=conn.proof(forger)
    )
    assert _error(await conn.call(bad2)) == ErrorCode.BAD_SIGNATURE
    await _chat_round(alice, bob, 3)

    # A forged token, then a revoked one.
    envelope = f.Envelope(device_id=victim.device_id, msg_id=os.urandom(16), body=b"x" * 300)
    conn = await RawConnection.open(server.link)
    forged = f.Deposit(rid=conn.rid(), token=secrets.token_bytes(32), envelopes=[envelope])
    assert _error(await conn.call(forged)) == ErrorCode.BAD_TOKEN
    ok = await conn.call(f.Deposit(rid=conn.rid(), token=token, envelopes=[envelope]))
    assert isinstance(ok, f.DepositOk)
    revoked = await victim_conn.call(f.RevokeToken(rid=victim_conn.rid(), token=token))
    assert isinstance(revoked, f.Ok)
    again = f.Deposit(
        rid=conn.rid(),
        token=token,
        envelopes=[msgspec.structs.replace(envelope, msg_id=os.urandom(16))],
    )
    assert _error(await conn.call(again)) == ErrorCode.BAD_TOKEN
    await _chat_round(alice, bob, 4)

    # A claim for a device the server does not know.
    _, _, token2 = await _registered(server.link)
    claim = f.ClaimKeys(rid=conn.rid(), token=token2, device_id=os.urandom(16))
    assert _error(await conn.call(claim)) == ErrorCode.UNKNOWN_DEVICE
    # Too many envelopes in one request, and one body too large.
    many = f.Deposit(
        rid=conn.rid(),
        token=token2,
        envelopes=[envelope] * (limits.MAX_ENVELOPES_PER_DEPOSIT + 1),
    )
    assert _error(await conn.call(many)) == ErrorCode.TOO_MANY_ENVELOPES
    # Requests that need a login, without one.
    assert _error(await conn.call(f.Subscribe(rid=conn.rid()))) == ErrorCode.NOT_AUTHENTICATED
    await _chat_round(alice, bob, 5)

    assert server.alive()
    await alice.close()
    await bob.close()


async def test_retried_deposit_is_stored_once_even_across_restart(server: ServerProcess) -> None:
    owner, device, token = await _registered(server.link)
    await owner.close()
    envelope = f.Envelope(device_id=device.device_id, msg_id=os.urandom(16), body=b"y" * 500)
    conn = await RawConnection.open(server.link)
    first = await conn.call(f.Deposit(rid=conn.rid(), token=token, envelopes=[envelope]))
    assert isinstance(first, f.DepositOk) and (first.stored, first.duplicates) == (1, 0)
    second = await conn.call(f.Deposit(rid=conn.rid(), token=token, envelopes=[envelope]))
    assert isinstance(second, f.DepositOk) and (second.stored, second.duplicates) == (0, 1)
    server.kill()
    server.start()
    conn = await RawConnection.open(server.link)
    third = await conn.call(f.Deposit(rid=conn.rid(), token=token, envelopes=[envelope]))
    assert isinstance(third, f.DepositOk) and (third.stored, third.duplicates) == (0, 1)
    reader = await RawConnection.open(server.link)
    assert isinstance(await reader.auth(device), f.AuthOk)
    assert isinstance(await reader.call(f.Subscribe(rid=reader.rid(), after=0)), f.Ok)
    await asyncio.sleep(1.0)
    # Delivery frames arrive after Ok; give them a moment, then count.
    while True:
        try:
            await asyncio.wait_for(reader.recv(), 0.5)
        except TimeoutError:
            break
    assert [e.msg_id for e in reader.delivered] == [envelope.msg_id]


@pytest.fixture
def small_server(tmp_path: Path) -> ServerProcess:
    return ServerProcess(tmp_path / "small", extra_args=("--max-mailbox-entries", "5"))


async def test_full_mailbox_answers_quota_and_one_consumer_at_a_time(
    small_server: ServerProcess,
) -> None:
    small_server.start()
    try:
        owner, device, token = await _registered(small_server.link)
        conn = await RawConnection.open(small_server.link)
        for _ in range(5):
            env = f.Envelope(device_id=device.device_id, msg_id=os.urandom(16), body=b"z" * 100)
            ok = await conn.call(f.Deposit(rid=conn.rid(), token=token, envelopes=[env]))
            assert isinstance(ok, f.DepositOk)
        env = f.Envelope(device_id=device.device_id, msg_id=os.urandom(16), body=b"z" * 100)
        full = await conn.call(f.Deposit(rid=conn.rid(), token=token, envelopes=[env]))
        assert _error(full) == ErrorCode.QUOTA

        # Two consumers of one mailbox: the newer replaces the older, never both.
        assert isinstance(await owner.call(f.Subscribe(rid=owner.rid(), after=0)), f.Ok)
        second = await RawConnection.open(small_server.link)
        assert isinstance(await second.auth(device), f.AuthOk)
        assert isinstance(await second.call(f.Subscribe(rid=second.rid(), after=0)), f.Ok)
        replaced = await asyncio.wait_for(owner.recv(), 10)
        assert isinstance(replaced, f.Error) and replaced.code == ErrorCode.REPLACED
        # After an ack the mailbox takes deposits again.
        while len(second.delivered) < 5:
            await asyncio.wait_for(second.recv_delivery(), 10)
        ack = await second.call(f.Ack(rid=second.rid(), up_to=second.delivered[-1].seq))
        assert isinstance(ack, f.Ok)
        ok = await conn.call(f.Deposit(rid=conn.rid(), token=token, envelopes=[env]))
        assert isinstance(ok, f.DepositOk)
    finally:
        small_server.stop()


async def test_entries_nobody_fetched_expire_after_the_mailbox_time_to_live(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "ttl", extra_args=("--mailbox-ttl-days", "0.00003"))
    server.start()  # about 2.6 s
    try:
        owner, device, token = await _registered(server.link)
        conn = await RawConnection.open(server.link)
        env = f.Envelope(device_id=device.device_id, msg_id=os.urandom(16), body=b"t" * 100)
        assert isinstance(
            await conn.call(f.Deposit(rid=conn.rid(), token=token, envelopes=[env])), f.DepositOk
        )
        await asyncio.sleep(4.0)
        assert isinstance(await owner.call(f.Subscribe(rid=owner.rid(), after=0)), f.Ok)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(owner.recv_delivery(), 1.0)
        assert owner.delivered == []
    finally:
        server.stop()
