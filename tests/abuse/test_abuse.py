"""Abuse and access control against a real server process: limits hold, others are served."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket

from samizdat.errors import ErrorCode
from samizdat.protocol import frames as f
from samizdat.protocol import limits
from tests.e2e.harness import ServerProcess
from tests.e2e.raw import RawConnection, RawDevice


async def _registered(link: str) -> tuple[RawConnection, RawDevice, bytes]:
    conn = await RawConnection.open(link)
    device = RawDevice.generate()
    assert isinstance(await conn.register(device), f.AuthOk)
    token = secrets.token_bytes(32)
    assert isinstance(await conn.call(f.AddToken(rid=conn.rid(), token=token)), f.Ok)
    return conn, device, token


def _deposit(conn: RawConnection, token: bytes, device: RawDevice) -> f.Deposit:
    envelope = f.Envelope(device_id=device.device_id, msg_id=os.urandom(16), body=b"x" * 300)
    return f.Deposit(rid=conn.rid(), token=token, envelopes=[envelope])


def _code(frame: f.ServerFrame) -> str:
    assert isinstance(frame, f.Error), frame
    return frame.code


async def test_hundreds_of_half_open_connections_do_not_starve_a_client(
    server: ServerProcess,
) -> None:
    # Slowloris: 300 TCP connections that send half a TLS record header and then nothing.
    socks: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"\x16\x03")
            socks.append(sock)
        conn, device, token = await _registered(server.link)
        sender = await RawConnection.open(server.link)
        assert isinstance(await sender.call(_deposit(sender, token, device)), f.DepositOk)
        assert isinstance(await conn.call(f.Subscribe(rid=conn.rid())), f.Ok)
        while not conn.delivered:
            await asyncio.wait_for(conn.recv_delivery(), 10)
        assert len(conn.delivered) == 1
        assert server.alive()
    finally:
        for sock in socks:
            sock.close()


async def test_a_flooding_token_is_rate_limited_while_another_is_served(
    server: ServerProcess,
) -> None:
    _, victim, flood_token = await _registered(server.link)
    _, other, good_token = await _registered(server.link)
    flooders = [await RawConnection.open(server.link) for _ in range(6)]
    polite = await RawConnection.open(server.link)

    async def flood(conn: RawConnection) -> list[str]:
        codes = []
        for _ in range(40):
            reply = await conn.call(_deposit(conn, flood_token, victim))
            codes.append(reply.code if isinstance(reply, f.Error) else "ok")
        return codes

    loop = asyncio.get_running_loop()
    started = loop.time()
    results = asyncio.gather(*(flood(conn) for conn in flooders))
    served = [await polite.call(_deposit(polite, good_token, other)) for _ in range(5)]
    codes = [code for batch in await results for code in batch]
    elapsed = loop.time() - started
    # The token's bucket holds 200 and refills 20/s (server/ratelimit.py): no more got in.
    assert set(codes) == {"ok", ErrorCode.RATE_LIMITED}, set(codes)
    assert codes.count("ok") <= 200 + 20 * elapsed + 1, (codes.count("ok"), elapsed)
    assert all(isinstance(reply, f.DepositOk) for reply in served), served


async def test_a_thousand_forged_tokens_are_refused_and_the_owner_is_served(
    server: ServerProcess,
) -> None:
    _, victim, token = await _registered(server.link)
    conns = [await RawConnection.open(server.link) for _ in range(10)]

    async def forge(conn: RawConnection) -> set[str]:
        codes = set()
        for _ in range(100):
            reply = await conn.call(_deposit(conn, secrets.token_bytes(32), victim))
            codes.add(_code(reply))
            if reply.code == ErrorCode.RATE_LIMITED:  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
        return codes

    codes = set().union(*await asyncio.gather(*(forge(conn) for conn in conns)))
    assert ErrorCode.BAD_TOKEN in codes and codes <= {ErrorCode.BAD_TOKEN, ErrorCode.RATE_LIMITED}
    fresh = await RawConnection.open(server.link)
    assert isinstance(await fresh.call(_deposit(fresh, token, victim)), f.DepositOk)


async def test_an_auth_proof_for_another_device_or_connection_is_refused(
    server: ServerProcess,
) -> None:
    owner_conn, owner, _ = await _registered(server.link)
    # A valid proof, bound to the first connection's nonce, replayed on a second one.
    replayed = f.Auth(rid=1, device_id=owner.device_id, proof=owner_conn.proof(owner))
    thief = await RawConnection.open(server.link)
    assert thief.welcome.nonce != owner_conn.welcome.nonce
    assert _code(await thief.call(replayed)) == ErrorCode.BAD_SIGNATURE
    # A device's own valid proof presented for another device id.
    _, mallory_dev, _ = await _registered(server.link)
    mallory = await RawConnection.open(server.link)
    forged = f.Auth(rid=mallory.rid(), device_id=owner.device_id, proof=mallory.proof(mallory_dev))
    assert _code(await mallory.call(forged)) == ErrorCode.BAD_SIGNATURE
    # Neither got in: mailbox commands still need a login.
    for conn in (thief, mallory):
        assert _code(await conn.call(f.Subscribe(rid=conn.rid()))) == ErrorCode.NOT_AUTHENTICATED


async def test_ack_only_touches_the_authenticated_devices_mailbox(
    server: ServerProcess,
) -> None:
    alice_conn, alice, alice_token = await _registered(server.link)
    bob_conn, bob, _ = await _registered(server.link)
    sender = await RawConnection.open(server.link)
    for _ in range(3):
        assert isinstance(await sender.call(_deposit(sender, alice_token, alice)), f.DepositOk)
    # Bob acknowledges far past every sequence number; Alice's entries must stay.
    assert isinstance(await bob_conn.call(f.Ack(rid=bob_conn.rid(), up_to=2**62)), f.Ok)
    await bob_conn.close()
    assert isinstance(await alice_conn.call(f.Subscribe(rid=alice_conn.rid())), f.Ok)
    while len(alice_conn.delivered) < 3:
        await asyncio.wait_for(alice_conn.recv_delivery(), 10)
    assert len(alice_conn.delivered) == 3
    assert bob.device_id != alice.device_id


async def test_one_token_more_than_the_limit_is_refused(server: ServerProcess) -> None:
    conn = await RawConnection.open(server.link)
    device = RawDevice.generate()
    assert isinstance(await conn.register(device), f.AuthOk)
    codes: list[str] = []
    added = 0
    while added < limits.MAX_TOKENS_PER_USER:
        reply = await conn.call(f.AddToken(rid=conn.rid(), token=secrets.token_bytes(32)))
        if isinstance(reply, f.Error) and reply.code == ErrorCode.RATE_LIMITED:
            await asyncio.sleep(0.2)  # the per-connection frame rate, not the limit under test
            continue
        assert isinstance(reply, f.Ok), reply
        added += 1
    while True:
        reply = await conn.call(f.AddToken(rid=conn.rid(), token=secrets.token_bytes(32)))
        code = _code(reply)
        if code != ErrorCode.RATE_LIMITED:
            break
        await asyncio.sleep(0.2)
    codes.append(code)
    assert codes == [ErrorCode.QUOTA], codes
