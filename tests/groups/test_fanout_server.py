"""The Fanout frame (protocol §5.3.10) against a real server process."""

from __future__ import annotations

import os

from samizdat.protocol import frames as f
from samizdat.protocol import limits
from tests.e2e.harness import ServerProcess
from tests.server.helpers import FrameClient, User


async def _user_with_token(server: ServerProcess, n_devices: int) -> tuple[User, bytes]:
    user = User.generate(n_devices)
    token = os.urandom(32)
    for device in user.devices:
        async with FrameClient(server.link) as client:
            await client.hello()
            await client.register(user, device)
            if device is user.devices[0]:
                assert isinstance(await client.request(f.AddToken(rid=1, token=token)), f.Ok)
    return user, token


async def _fetch(server: ServerProcess, user: User, index: int) -> list[f.Entry]:
    async with FrameClient(server.link) as client:
        await client.hello()
        await client.register(user, user.devices[index])
        assert isinstance(await client.request(f.Subscribe(rid=2, after=0)), f.Ok)
        deliver = await client.recv()
        assert isinstance(deliver, f.Deliver)
        return deliver.entries


async def test_one_body_reaches_every_listed_device_once(server: ServerProcess) -> None:
    a, a_token = await _user_with_token(server, 2)
    b, b_token = await _user_with_token(server, 1)
    frame = f.Fanout(
        rid=5,
        msg_id=os.urandom(16),
        body=b"one megolm body",
        targets=[
            f.FanoutTarget(token=a_token, devices=[d.device_id for d in a.devices]),
            f.FanoutTarget(token=b_token, devices=[b.devices[0].device_id]),
        ],
    )
    async with FrameClient(server.link) as sender:
        await sender.hello()
        ok = await sender.request(frame)
        assert isinstance(ok, f.DepositOk) and (ok.stored, ok.duplicates) == (3, 0)
        # A retry with the same msg_id stores nothing more.
        again = await sender.request(frame)
        assert isinstance(again, f.DepositOk) and (again.stored, again.duplicates) == (0, 3)
    for user, index in ((a, 0), (a, 1), (b, 0)):
        entries = await _fetch(server, user, index)
        assert [e.body for e in entries] == [b"one megolm body"]


async def test_fanout_refusals_store_nothing(server: ServerProcess) -> None:
    a, a_token = await _user_with_token(server, 1)
    b, b_token = await _user_with_token(server, 1)
    good = f.FanoutTarget(token=a_token, devices=[a.devices[0].device_id])
    async with FrameClient(server.link) as sender:
        await sender.hello()
        # b's device under a's token: all or nothing, nothing stored for a either.
        wrong = f.FanoutTarget(token=a_token, devices=[b.devices[0].device_id])
        await sender.expect_error(
            f.Fanout(rid=1, msg_id=os.urandom(16), body=b"x", targets=[good, wrong]),
            "unknown_device",
        )
        unknown = f.FanoutTarget(token=os.urandom(32), devices=[b.devices[0].device_id])
        await sender.expect_error(
            f.Fanout(rid=2, msg_id=os.urandom(16), body=b"x", targets=[good, unknown]),
            "bad_token",
        )
        big = b"x" * (limits.MAX_ENVELOPE_BODY + 1)
        await sender.expect_error(
            f.Fanout(rid=3, msg_id=os.urandom(16), body=big, targets=[good]),
            "envelope_too_large",
        )
        many = [
            f.FanoutTarget(token=b_token, devices=[os.urandom(16) for _ in range(16)])
            for _ in range(limits.MAX_FANOUT_DEVICES // 16 + 1)
        ]
        await sender.expect_error(
            f.Fanout(rid=4, msg_id=os.urandom(16), body=b"x", targets=many),
            "too_many_envelopes",
        )
    async with FrameClient(server.link) as client:
        await client.hello()
        await client.register(a, a.devices[0])
        assert isinstance(await client.request(f.Subscribe(rid=2, after=0)), f.Ok)
        assert isinstance(await client.request(f.Ack(rid=3, up_to=0)), f.Ok)
