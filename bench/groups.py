"""Sending to a group of 1,000 member devices: the first message (key sharing) and the next.

See bench/README.md. One ``samizdat server`` process (SQLite) on 127.0.0.1; the sender is a
real :class:`~samizdat.client.app.Client`; the members are registered devices with real
vodozemac accounts and sealing keys (real signed one-time keys), driven over raw
protocol connections so that 1,000 devices fit in one process. A sample of member
devices then fetches its mailbox and decrypts the room key (Olm) and the message
(Megolm), to show that what was measured is what members read.

What is *not* measured: distributing the group state itself. The sender installs the
signed state locally (``groups`` would send every member card to every member device,
which is O(members²) and does not scale to this size yet; see docs/decisions).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deposit_delivery import _start_server  # noqa: E402
from samizdat.client import groups  # noqa: E402
from samizdat.client.app import Client
from samizdat.client.connection import Connection, now_ms
from samizdat.client.devices import ensure_self_token
from samizdat.client.messaging import (
    auth_proof,
    device_keys,
    open_entry,
    sign_device_list,
    sign_one_time_key,
)
from samizdat.crypto.megolm import MegolmInbound
from samizdat.crypto.olm import OlmAccount, OlmSession
from samizdat.crypto.padding import unpad
from samizdat.crypto.sealing import SealingKey
from samizdat.crypto.signing import SigningKey
from samizdat.protocol import frames
from samizdat.protocol.control import RoomKey, decode_control, decode_group_box, decode_group_text
from samizdat.protocol.descriptor import open_descriptor
from samizdat.protocol.envelope import decode_payload
from samizdat.protocol.groups import GroupMember, GroupState
from samizdat.protocol.links import ContactCard, Invite, decode_server_link, encode_invite

PASSPHRASE = "bench"


@dataclass
class Member:
    user_key: SigningKey
    accounts: list[OlmAccount]
    sealing: list[SealingKey]
    token: bytes
    card: ContactCard


async def _register_members(link: str, users: int, per_user: int) -> list[Member]:
    signed = decode_server_link(link).descriptor
    server_key = open_descriptor(signed, now_ms()).server_key
    members: list[Member] = []

    async def worker(chunk: range) -> None:
        conn = await Connection.open(signed, server_key)
        try:
            for _ in chunk:
                user_key = SigningKey.generate()
                accounts = [OlmAccount.create() for _ in range(per_user)]
                sealing = [SealingKey.generate() for _ in range(per_user)]
                keys = [device_keys(a, s) for a, s in zip(accounts, sealing, strict=True)]
                devices = sign_device_list(user_key, keys, 1, now_ms(), "")
                token = secrets.token_bytes(32)
                for account, device in zip(accounts, keys, strict=True):
                    proof = auth_proof(account, server_key, conn.welcome.nonce)
                    await conn.call(
                        frames.Register(rid=0, device=device, devices=devices, proof=proof),
                        frames.AuthOk,
                    )
                    one_time = [
                        sign_one_time_key(account, k) for k in account.generate_one_time_keys(2)
                    ]
                    fallback = sign_one_time_key(account, account.generate_fallback_key())
                    await conn.call(
                        frames.UploadKeys(rid=0, one_time_keys=one_time, fallback_key=fallback),
                        frames.Ok,
                    )
                    account.mark_keys_as_published()
                await conn.call(frames.AddToken(rid=0, token=token), frames.Ok)
                card = ContactCard(devices=devices, server=signed, token=token, name="")
                members.append(Member(user_key, accounts, sealing, token, card))
        finally:
            await conn.close()

    workers = 8
    await asyncio.gather(*(worker(range(i, users, workers)) for i in range(workers)))
    return members


async def _install_group(sender: Client, members: list[Member]) -> str:
    """Make ``sender`` the admin of a group with every member (state installed locally)."""
    for i, member in enumerate(members):
        await sender.add_contact(encode_invite(Invite(version=1, card=member.card)), f"m{i}")
    self_token = await ensure_self_token(sender)
    own = ContactCard(
        devices=sender._identity.devices, server=sender._identity.server, token=self_token
    )
    group_id = secrets.token_bytes(16)
    state = GroupState(
        group_id=group_id,
        version=1,
        name="bench",
        members=[GroupMember(sender.own_user_key, True)]
        + [GroupMember(m.user_key.public_bytes) for m in members],
    )
    record = groups.GroupRecord(
        state=groups._sign(sender, state), cards=[own] + [m.card for m in members], name="bench"
    )
    with sender._store.locked():
        groups._save(sender, group_id, record)
    return "bench"


async def _check_sample(link: str, members: list[Member], texts: list[str], sample: int) -> int:
    """Fetch and decrypt the mailbox of ``sample`` member devices; returns devices checked."""
    signed = decode_server_link(link).descriptor
    server_key = open_descriptor(signed, now_ms()).server_key
    checked = 0
    for member in members[:sample]:
        account, sealing = member.accounts[0], member.sealing[0]
        conn = await Connection.open(signed, server_key)
        try:
            proof = auth_proof(account, server_key, conn.welcome.nonce)
            device_id = device_keys(account, sealing).device_id
            await conn.call(frames.Auth(rid=0, device_id=device_id, proof=proof), frames.AuthOk)
            await conn.call(frames.Subscribe(rid=0, after=0), frames.Ok)
            inbound: dict[str, MegolmInbound] = {}
            sessions: dict[bytes, OlmSession] = {}
            got: list[str] = []
            while len(got) < len(texts):
                deliver = await conn.next_delivery(10.0)
                if deliver is None:
                    break
                for entry in deliver.entries:
                    box = decode_group_box(entry.body)
                    if box is not None:
                        plaintext, _ = inbound[box.session_id].decrypt(box.megolm)
                        got.append(decode_group_text(unpad(plaintext)).text)
                        continue
                    sealed = open_entry(sealing, entry.body)
                    session = sessions.get(sealed.sender_identity_key)
                    if session is None:
                        session, olm = account.create_inbound_session(
                            sealed.sender_identity_key, sealed.olm_type, sealed.olm
                        )
                        sessions[sealed.sender_identity_key] = session
                    else:
                        olm = session.decrypt(sealed.olm_type, sealed.olm)
                    payload = decode_payload(unpad(olm))
                    assert payload.control is not None
                    key = decode_control(payload.control)
                    assert isinstance(key, RoomKey)
                    inbound[key.session_id] = MegolmInbound.from_session_key(key.session_key)
            assert got == texts, (got, texts)
            checked += 1
        finally:
            await conn.close()
    return checked


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, link = _start_server(root / "server", [])
        try:
            t0 = time.perf_counter()
            members = await _register_members(link, args.users, args.devices_per_user)
            setup = time.perf_counter() - t0
            sender = await Client.create(root / "sender", PASSPHRASE, link, "sender")
            try:
                name = await _install_group(sender, members)
                print(
                    f"setup: {len(members)} users x {args.devices_per_user} devices registered"
                    f" in {setup:.1f} s (not part of the figures)"
                )
                texts: list[str] = []
                rows = []
                for i in range(args.messages):
                    text = f"message {i}"
                    start = time.perf_counter()
                    stats = await groups.send(sender, name, text)
                    rows.append((time.perf_counter() - start, stats))
                    texts.append(text)
                first_s, first = rows[0]
                print(f"member devices: {first.devices}")
                print(
                    f"first message: {first_s * 1000:.0f} ms; room keys to {first.room_keys_sent}"
                    f" devices ({first.key_bytes / 1024:.0f} KiB of Olm deposits, new sessions"
                    f" from claimed keys) + {first.message_bytes / 1024:.1f} KiB of fan-out"
                )
                rest = rows[1:]
                if rest:
                    times = sorted(r[0] for r in rest)
                    up = sum(r[1].key_bytes + r[1].message_bytes for r in rest) / len(rest)
                    print(
                        f"next {len(rest)} messages: median {times[len(times) // 2] * 1000:.1f} ms,"
                        f" max {times[-1] * 1000:.1f} ms; uploaded {up / 1024:.1f} KiB each"
                        f" (one Megolm body + the recipient list; no key sharing)"
                    )
                # A rotation (as after a removal or 100 messages): new Megolm session, the
                # Olm sessions with every device already exist.
                with sender._store.locked():
                    sender._store.delete("gout", sender._store.get("gname", name) or b"")
                start = time.perf_counter()
                stats = await groups.send(sender, name, "after rotation")
                rotated_s = time.perf_counter() - start
                texts.append("after rotation")
                assert stats.rotated
                print(
                    f"first message of a rotated session: {rotated_s * 1000:.0f} ms; room keys"
                    f" to {stats.room_keys_sent} devices over existing Olm sessions"
                    f" ({stats.key_bytes / 1024:.0f} KiB) + {stats.message_bytes / 1024:.1f} KiB"
                )
                checked = await _check_sample(link, members, texts, args.sample)
                print(f"decrypted by {checked} sampled member devices: all {len(texts)} messages")
            finally:
                await sender.close()
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--devices-per-user", type=int, default=2)
    parser.add_argument("--messages", type=int, default=11, help="the first and the next ones")
    parser.add_argument("--sample", type=int, default=3, help="member devices that decrypt")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
