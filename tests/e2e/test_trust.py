"""Trust: pinned server keys, one-time keys used up, nothing secret in logs or reprs."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import websockets

from samizdat.client.app import Client
from samizdat.errors import ConnectError
from samizdat.protocol import frames as f
from samizdat.protocol.keys import decode_device_list
from samizdat.protocol.links import decode_invite
from tests.e2e.harness import PASSPHRASE, ServerProcess, free_port, scan_for
from tests.e2e.raw import RawConnection, descriptor_of, pinned_context


async def test_client_refuses_a_server_whose_certificate_does_not_match(tmp_path: Path) -> None:
    """The descriptor names an endpoint; whoever answers there must hold the pinned key."""
    port = free_port()
    genuine = ServerProcess(tmp_path / "genuine", port=port)
    genuine.start()
    genuine.stop()
    impostor = ServerProcess(tmp_path / "impostor", port=port)  # same address, other keys
    impostor.start()
    try:
        with pytest.raises(ConnectError):
            await Client.create(tmp_path / "eve-victim", PASSPHRASE, genuine.link, "victim")
        # The impostor's own link works, so the refusal is about the pin, not the network.
        client = await Client.create(tmp_path / "ok", PASSPHRASE, impostor.link, "ok")
        await client.close()
    finally:
        impostor.stop()


async def test_new_sessions_start_on_the_fallback_key_when_one_time_keys_run_out(
    server: ServerProcess, tmp_path: Path
) -> None:
    bob = await Client.create(tmp_path / "bob", PASSPHRASE, server.link, "bob")
    link = await bob.invite()
    card = decode_invite(link).card
    [device] = decode_device_list(card.devices).devices
    conn = await RawConnection.open(server.link)
    fallbacks = 0
    for _ in range(60):  # more than the client uploads
        bundle = await conn.call(
            f.ClaimKeys(rid=conn.rid(), token=card.token, device_id=device.device_id)
        )
        assert isinstance(bundle, f.KeyBundle), bundle
        fallbacks += bundle.key.fallback
    # Past the token's claim budget (10) the fallback key is handed out, as when keys run out.
    assert fallbacks >= 10
    carol = await Client.create(tmp_path / "carol", PASSPHRASE, server.link, "carol")
    await carol.add_contact(link, "bob")
    await carol.send("bob", "via the fallback key")
    got = [m async for m in bob.listen(count=1, timeout=20)]
    assert [m.text for m in got] == ["via the fallback key"]
    await bob.close()
    await carol.close()


async def test_no_secret_in_logs_or_reprs(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server", extra_args=("--log-level", "debug"))
    server.start()
    try:
        alice = await Client.create(tmp_path / "alice", PASSPHRASE, server.link, "alice")
        bob = await Client.create(tmp_path / "bob", PASSPHRASE, server.link, "bob")
        invite = await alice.invite()
        await bob.add_contact(invite, "alice")
        marker = "LOGMARKER-" + os.urandom(8).hex()
        await bob.send("alice", marker)
        assert [m.text async for m in alice.listen(count=1, timeout=20)] == [marker]
        card = decode_invite(invite).card
        device_list = decode_device_list(card.devices)
        secrets_raw = [card.token, device_list.user_key] + [
            value
            for device in device_list.devices
            for value in (device.device_id, device.signing_key, device.identity_key)
        ]
        needles = [marker.encode()]
        for raw in secrets_raw:
            needles += [
                raw,
                raw.hex().encode(),
                base64.b64encode(raw).rstrip(b"="),
                base64.urlsafe_b64encode(raw).rstrip(b"="),
            ]
        for obj in (alice, bob):
            text = (repr(obj) + str(obj)).encode()
            assert not [n for n in needles if n in text]
        await alice.close()
        await bob.close()
    finally:
        server.stop()
    log = server.log_path.read_bytes()
    assert b" DEBUG " in log  # debug logging really was on, so the scan below means something
    assert scan_for(server.log_path, needles) == []


async def test_client_refuses_a_certificate_from_the_right_ca_with_another_key(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The CA alone is not enough: the leaf key must match the descriptor's pin."""
    old_link = server.link
    server.stop()
    (server.data_dir / "tls.pem").unlink()
    (server.data_dir / "tls.key").unlink()
    server.start()  # same server key and CA, a new TLS key
    descriptor = descriptor_of(old_link)
    ws = await websockets.connect(
        descriptor.endpoints[0].url, ssl=pinned_context(descriptor), max_size=2**20
    )
    await ws.close()  # the handshake against the CA alone succeeds...
    with pytest.raises(ConnectError):  # ...but the client checks the pin too
        await Client.create(tmp_path / "victim", PASSPHRASE, old_link, "victim")
