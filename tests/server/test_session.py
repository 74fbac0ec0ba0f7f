"""Every frame and error code, driven over a real TLS WebSocket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest
from websockets.exceptions import ConnectionClosed

from samizdat.protocol import frames as f
from samizdat.protocol import limits
from samizdat.protocol.keys import decode_device_list
from samizdat.server.app import RunningServer

from .helpers import Device, FrameClient, User


def env(device: Device, n: int, body: bytes = b"ciphertext") -> f.Envelope:
    return f.Envelope(device_id=device.device_id, msg_id=n.to_bytes(16, "big"), body=body)


async def setup_user(c: FrameClient, n_devices: int = 1) -> tuple[User, bytes]:
    """Register the user's first device on ``c`` and hand out one token."""
    user = User.generate(n_devices)
    await c.register(user, user.devices[0])
    token = os.urandom(32)
    assert isinstance(await c.request(f.AddToken(rid=c.rid(), token=token)), f.Ok)
    return user, token


async def recv_deliveries(c: FrameClient, count: int) -> list[f.Entry]:
    entries: list[f.Entry] = []
    while len(entries) < count:
        frame = await asyncio.wait_for(c.recv(), 5)
        assert isinstance(frame, f.Deliver), frame
        entries.extend(frame.entries)
    return entries


async def test_hello_and_welcome(server: RunningServer) -> None:
    async with FrameClient(server.link) as c:
        await c.send(f.Hello(versions=[0, 1, 7]))
        welcome = await c.recv()
        assert isinstance(welcome, f.Welcome)
        assert welcome.version == 1 and len(welcome.nonce) == 32
        assert welcome.descriptor == server.descriptor
        assert welcome.limits.max_frame == limits.MAX_FRAME
        assert c.descriptor.endpoints[0].url == f"wss://127.0.0.1:{server.port}/v1/ws"


async def test_unsupported_version_closes(server: RunningServer) -> None:
    async with FrameClient(server.link) as c:
        await c.send(f.Hello(versions=[99]))
        error = await c.recv()
        assert isinstance(error, f.Error) and error.code == "unsupported_version"
        assert error.rid is None
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(c.recv(), 5)


async def test_request_before_hello_is_refused(server: RunningServer) -> None:
    async with FrameClient(server.link) as c:
        await c.expect_error(f.Subscribe(rid=5), "bad_frame")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(c.recv(), 5)


async def test_register_upload_claim(server: RunningServer) -> None:
    async with FrameClient(server.link) as c, FrameClient(server.link) as sender:
        await c.hello()
        await sender.hello()
        user, token = await setup_user(c)
        device = user.devices[0]
        answer = await c.request(
            f.UploadKeys(
                rid=c.rid(),
                one_time_keys=[device.signed_key("k1"), device.signed_key("k2")],
                fallback_key=device.signed_key("fb", fallback=True),
            )
        )
        assert isinstance(answer, f.Ok)
        claimed = []
        for _ in range(3):
            bundle = await sender.request(
                f.ClaimKeys(rid=sender.rid(), token=token, device_id=device.device_id)
            )
            assert isinstance(bundle, f.KeyBundle)
            assert decode_device_list(bundle.devices).user_key == user.user_key
            claimed.append(bundle.key)
        assert [k.key_id for k in claimed] == ["k1", "k2", "fb"] and claimed[2].fallback

    # A later connection logs in with Auth and sees the counts.
    async with FrameClient(server.link) as c:
        await c.hello()
        ok = await c.request(
            f.Auth(
                rid=c.rid(),
                device_id=device.device_id,
                proof=device.proof(c.descriptor.server_key, c.nonce),
            )
        )
        assert isinstance(ok, f.AuthOk)
        assert (ok.one_time_keys, ok.has_fallback_key) == (0, True)


async def test_no_keys(server: RunningServer) -> None:
    async with FrameClient(server.link) as c:
        await c.hello()
        user, token = await setup_user(c)
        await c.expect_error(
            f.ClaimKeys(rid=c.rid(), token=token, device_id=user.devices[0].device_id), "no_keys"
        )


async def test_auth_errors(server: RunningServer) -> None:
    async with FrameClient(server.link) as c:
        await c.hello()
        stranger = Device.generate()
        await c.expect_error(
            f.Auth(
                rid=c.rid(),
                device_id=stranger.device_id,
                proof=stranger.proof(c.descriptor.server_key, c.nonce),
            ),
            "unknown_device",
        )
        user = User.generate()
        device = user.devices[0]
        # A proof over another nonce (a replay from another connection) fails.
        await c.expect_error(
            f.Register(
                rid=c.rid(),
                device=device.keys,
                devices=user.signed_list(),
                proof=device.proof(c.descriptor.server_key, bytes(32)),
            ),
            "bad_signature",
        )
        # A device that is not in the signed list.
        await c.expect_error(
            f.Register(
                rid=c.rid(),
                device=stranger.keys,
                devices=user.signed_list(),
                proof=stranger.proof(c.descriptor.server_key, c.nonce),
            ),
            "unknown_device",
        )
        # A device list not signed by its user key.
        forged = msgspec.structs.replace(user.signed_list(), signature=bytes(64))
        await c.expect_error(
            f.Register(
                rid=c.rid(),
                device=device.keys,
                devices=forged,
                proof=device.proof(c.descriptor.server_key, c.nonce),
            ),
            "bad_signature",
        )
        await c.register(user, device)
        await c.expect_error(
            f.Auth(rid=c.rid(), device_id=device.device_id, proof=bytes(64)), "bad_signature"
        )


async def test_authenticated_requests_need_login(server: RunningServer) -> None:
    async with FrameClient(server.link) as c:
        await c.hello()
        for frame in (
            f.UploadKeys(rid=c.rid(), one_time_keys=[]),
            f.AddToken(rid=c.rid(), token=bytes(32)),
            f.RevokeToken(rid=c.rid(), token=bytes(32)),
            f.Subscribe(rid=c.rid()),
            f.Ack(rid=c.rid(), up_to=1),
        ):
            await c.expect_error(frame, "not_authenticated")


async def test_upload_key_errors(server: RunningServer) -> None:
    async with FrameClient(server.link) as c:
        await c.hello()
        user, _ = await setup_user(c)
        device = user.devices[0]
        other = Device.generate()
        await c.expect_error(
            f.UploadKeys(rid=c.rid(), one_time_keys=[other.signed_key("x")]), "bad_signature"
        )
        await c.expect_error(
            f.UploadKeys(
                rid=c.rid(), one_time_keys=[device.signed_key(f"k{i}") for i in range(101)]
            ),
            "too_many_keys",
        )
        await c.expect_error(
            f.UploadKeys(rid=c.rid(), one_time_keys=[device.signed_key("f", fallback=True)]),
            "bad_frame",
        )
        for n in range(2):
            batch = [device.signed_key(f"{n}-{i}") for i in range(100)]
            assert isinstance(await c.request(f.UploadKeys(rid=c.rid(), one_time_keys=batch)), f.Ok)
        # MAX_STORED_ONE_TIME_KEYS = 200 are held now.
        await c.expect_error(
            f.UploadKeys(rid=c.rid(), one_time_keys=[device.signed_key("z")]), "too_many_keys"
        )


async def test_tokens_and_deposit_errors(server: RunningServer) -> None:
    async with FrameClient(server.link) as c, FrameClient(server.link) as sender:
        await c.hello()
        await sender.hello()
        user, token = await setup_user(c)
        device = user.devices[0]
        other_user, other_token = await setup_user(sender)

        await sender.expect_error(
            f.Deposit(rid=sender.rid(), token=os.urandom(32), envelopes=[env(device, 1)]),
            "bad_token",
        )
        await sender.expect_error(
            f.Deposit(rid=sender.rid(), token=token, envelopes=[env(other_user.devices[0], 1)]),
            "unknown_device",
        )
        await sender.expect_error(
            f.ClaimKeys(rid=sender.rid(), token=other_token, device_id=device.device_id),
            "unknown_device",
        )
        await sender.expect_error(
            f.ClaimKeys(rid=sender.rid(), token=token, device_id=os.urandom(16)),
            "unknown_device",
        )
        await sender.expect_error(
            f.Deposit(rid=sender.rid(), token=token, envelopes=[env(device, i) for i in range(65)]),
            "too_many_envelopes",
        )
        await sender.expect_error(
            f.Deposit(
                rid=sender.rid(),
                token=token,
                envelopes=[env(device, 1, bytes(limits.MAX_ENVELOPE_BODY + 1))],
            ),
            "envelope_too_large",
        )
        # Another user cannot take or revoke the token; its owner revokes it.
        await sender.expect_error(f.AddToken(rid=sender.rid(), token=token), "conflict")
        await sender.expect_error(f.RevokeToken(rid=sender.rid(), token=token), "bad_token")
        ok = await sender.request(
            f.Deposit(rid=sender.rid(), token=token, envelopes=[env(device, 1)])
        )
        assert isinstance(ok, f.DepositOk)
        assert isinstance(await c.request(f.RevokeToken(rid=c.rid(), token=token)), f.Ok)
        await sender.expect_error(
            f.Deposit(rid=sender.rid(), token=token, envelopes=[env(device, 2)]), "bad_token"
        )


async def test_deposit_subscribe_live_push_ack(server: RunningServer) -> None:
    async with FrameClient(server.link) as c, FrameClient(server.link) as sender:
        await c.hello()
        await sender.hello()
        user, token = await setup_user(c, n_devices=2)
        first, second = user.devices
        async with FrameClient(server.link) as c2:
            await c2.hello()
            await c2.register(user, second)
        # Fan-out: one deposit, two devices; a retry stores nothing new.
        deposit = f.Deposit(
            rid=sender.rid(), token=token, envelopes=[env(first, 1, b"a"), env(second, 1, b"b")]
        )
        ok = await sender.request(deposit)
        assert isinstance(ok, f.DepositOk) and (ok.stored, ok.duplicates) == (2, 0)
        again = await sender.request(msgspec.structs.replace(deposit, rid=sender.rid()))
        assert isinstance(again, f.DepositOk) and (again.stored, again.duplicates) == (0, 2)

        assert isinstance(await c.request(f.Subscribe(rid=c.rid(), after=0)), f.Ok)
        (entry,) = await recv_deliveries(c, 1)
        assert (entry.seq, entry.msg_id, entry.body) == (1, (1).to_bytes(16, "big"), b"a")

        # Live push.
        await sender.request(f.Deposit(rid=sender.rid(), token=token, envelopes=[env(first, 2)]))
        (live,) = await recv_deliveries(c, 1)
        assert live.seq == 2

        assert isinstance(await c.request(f.Ack(rid=c.rid(), up_to=2)), f.Ok)
        assert await server.store.mailbox_size(first.device_id) == 0
        assert await server.store.mailbox_size(second.device_id) == 1


async def test_backlog_in_batches_and_resubscribe(server: RunningServer) -> None:
    async with FrameClient(server.link) as c, FrameClient(server.link) as sender:
        await c.hello()
        await sender.hello()
        user, token = await setup_user(c)
        device = user.devices[0]
        big = bytes(60_000)
        for start in range(0, 80, 20):
            envelopes = [
                env(device, i, big if i % 10 == 0 else b"x") for i in range(start, start + 20)
            ]
            await sender.request(f.Deposit(rid=sender.rid(), token=token, envelopes=envelopes))
        assert isinstance(await c.request(f.Subscribe(rid=c.rid(), after=5)), f.Ok)
        entries = await recv_deliveries(c, 75)
        assert [e.seq for e in entries] == list(range(6, 81))
        # Subscribing again on the same connection restarts from the new cursor.
        assert isinstance(await c.request(f.Subscribe(rid=c.rid(), after=78)), f.Ok)
        assert [e.seq for e in await recv_deliveries(c, 2)] == [79, 80]


async def test_replaced_consumer(server: RunningServer) -> None:
    async with FrameClient(server.link) as old, FrameClient(server.link) as new:
        await old.hello()
        await new.hello()
        user, token = await setup_user(old)
        device = user.devices[0]
        assert isinstance(await old.request(f.Subscribe(rid=old.rid())), f.Ok)
        await new.request(
            f.Auth(
                rid=new.rid(),
                device_id=device.device_id,
                proof=device.proof(new.descriptor.server_key, new.nonce),
            )
        )
        assert isinstance(await new.request(f.Subscribe(rid=new.rid())), f.Ok)
        replaced = await asyncio.wait_for(old.recv(), 5)
        assert (
            isinstance(replaced, f.Error) and replaced.code == "replaced" and replaced.rid is None
        )
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(old.recv(), 5)
        # The new consumer gets what arrives now.
        await new.request(f.Deposit(rid=new.rid(), token=token, envelopes=[env(device, 9)]))
        (entry,) = await recv_deliveries(new, 1)
        assert entry.msg_id == (9).to_bytes(16, "big")


async def test_quota(small_server: RunningServer) -> None:
    async with FrameClient(small_server.link) as c:
        welcome = await c.hello()
        assert welcome.limits.max_mailbox_entries == 3
        user, token = await setup_user(c)
        device = user.devices[0]
        ok = await c.request(
            f.Deposit(rid=c.rid(), token=token, envelopes=[env(device, i) for i in range(3)])
        )
        assert isinstance(ok, f.DepositOk) and ok.stored == 3
        await c.expect_error(
            f.Deposit(rid=c.rid(), token=token, envelopes=[env(device, 3)]), "quota"
        )
        await c.request(f.Ack(rid=c.rid(), up_to=1))
        ok = await c.request(f.Deposit(rid=c.rid(), token=token, envelopes=[env(device, 3)]))
        assert isinstance(ok, f.DepositOk) and ok.stored == 1


async def test_bad_frames_keep_the_server_up(server: RunningServer) -> None:
    async with FrameClient(server.link) as c, FrameClient(server.link) as bystander:
        await c.hello()
        await bystander.hello()
        await c.send_raw(b"\xc1 not msgpack")
        error = await c.recv()
        assert isinstance(error, f.Error) and error.code == "bad_frame" and error.rid is None
        await c.send_raw(msgspec.msgpack.encode({"t": "deposit", "rid": 42, "token": b"short"}))
        error = await c.recv()
        assert isinstance(error, f.Error) and (error.code, error.rid) == ("bad_frame", 42)
        await c.ws.send("text frame")
        error = await c.recv()
        assert isinstance(error, f.Error) and error.code == "bad_frame"
        await c.send_raw(
            msgspec.msgpack.encode({"t": "ack", "rid": 7, "pad": bytes(limits.MAX_FRAME)})
        )
        error = await c.recv()
        assert isinstance(error, f.Error) and (error.code, error.rid) == ("frame_too_large", 7)
        # Far too large: the connection goes, the server and other connections stay.
        await c.send_raw(bytes(limits.MAX_FRAME * 2))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(c.recv(), 5)
        await bystander.expect_error(f.Subscribe(rid=bystander.rid()), "not_authenticated")


async def test_hello_twice(server: RunningServer) -> None:
    async with FrameClient(server.link) as c:
        await c.hello()
        await c.send(f.Hello(versions=[1]))
        error = await c.recv()
        assert isinstance(error, f.Error) and error.code == "bad_frame"
