"""Key-claim exhaustion: one requester cannot drain a device's one-time keys."""

from __future__ import annotations

import secrets

from samizdat.protocol import frames as f
from samizdat.server.ratelimit import RateLimits
from tests.e2e.harness import ServerProcess
from tests.e2e.raw import RawConnection, RawDevice

#: Claims one (token, device) pair may make before it gets only the fallback key.
BUDGET = int(RateLimits().claim_burst)
UPLOADED = 40


async def claim_ids(conn: RawConnection, token: bytes, device: RawDevice, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        bundle = await conn.call(
            f.ClaimKeys(rid=conn.rid(), token=token, device_id=device.device_id)
        )
        assert isinstance(bundle, f.KeyBundle), bundle
        ids.append(("fallback:" if bundle.key.fallback else "") + bundle.key.key_id)
    return ids


async def device_with_keys(link: str, tokens: int) -> tuple[RawDevice, list[bytes]]:
    """A device registered through ``link`` with UPLOADED one-time keys ``k000``... and a
    fallback key ``fb``, and ``tokens`` delivery tokens of its user."""
    owner = await RawConnection.open(link)
    device = RawDevice.generate()
    assert isinstance(await owner.register(device), f.AuthOk)
    keys = [device.device.signed_key(f"k{i:03}") for i in range(UPLOADED)]
    upload = f.UploadKeys(
        rid=owner.rid(),
        one_time_keys=keys,
        fallback_key=device.device.signed_key("fb", fallback=True),
    )
    assert isinstance(await owner.call(upload), f.Ok)
    made = [secrets.token_bytes(32) for _ in range(tokens)]
    for token in made:
        assert isinstance(await owner.call(f.AddToken(rid=owner.rid(), token=token)), f.Ok)
    await owner.close()
    return device, made


async def test_a_requester_over_its_claim_budget_gets_only_the_fallback_key(
    server: ServerProcess,
) -> None:
    device, (greedy_token, polite_token) = await device_with_keys(server.link, 2)

    greedy = await RawConnection.open(server.link)
    # limit + 1: the budget's worth of one-time keys, then the fallback key, and it stays so.
    claimed = await claim_ids(greedy, greedy_token, device, BUDGET + 1 + 20)
    assert claimed[:BUDGET] == [f"k{i:03}" for i in range(BUDGET)]
    assert claimed[BUDGET:] == ["fallback:fb"] * 21

    # Another requester (its own token) still gets fresh one-time keys.
    polite = await RawConnection.open(server.link)
    assert await claim_ids(polite, polite_token, device, 2) == [
        f"k{BUDGET:03}",
        f"k{BUDGET + 1:03}",
    ]

    # And the device sees that only budget + 2 one-time keys were spent, not all of them.
    again = await RawConnection.open(server.link)
    ok = await again.auth(device)
    assert isinstance(ok, f.AuthOk)
    assert (ok.one_time_keys, ok.has_fallback_key) == (UPLOADED - BUDGET - 2, True)
