"""A group of 1,000 member devices, created and used through the real client code path.

See bench/README.md. One ``samizdat server`` process (SQLite) on 127.0.0.1; the admin is a
real :class:`~samizdat.client.app.Client` that runs ``groups.create`` (room keys to every
device over Olm, then the signed state and every member card once, fanned out), sends
messages, rotates and adds a member. The members are registered devices with real
vodozemac accounts and sealing keys (real signed one-time keys), driven over raw protocol
connections so that 1,000 devices fit in one process. A sample of member devices then
fetches its mailbox and decrypts everything (Olm room key, Megolm state, messages) to show
that what was measured is what members read.

Bytes are the encoded client frames the admin sends (counted around
``Connection.call_any``), by frame type.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rawclient import start_server  # noqa: E402
from samizdat.client import groups  # noqa: E402
from samizdat.client.app import Client
from samizdat.client.connection import Connection, now_ms
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


class Uploads:
    """Bytes of client frames sent, by frame type (bench instrumentation only)."""

    def __init__(self) -> None:
        self.by_type: Counter[str] = Counter()
        #: Seconds spent waiting for answers, by frame type (overlapping calls add up).
        self.waited: defaultdict[str, float] = defaultdict(float)
        original = Connection.call_any

        async def counting(conn: Connection, frame: frames.ClientFrame) -> frames.ServerFrame:
            self.by_type[type(frame).__name__] += len(frames.encode(frame))
            start = time.perf_counter()
            try:
                return await original(conn, frame)
            finally:
                self.waited[type(frame).__name__] += time.perf_counter() - start

        Connection.call_any = counting  # type: ignore[method-assign,assignment]

    def take(self) -> Counter[str]:
        out, self.by_type, self.waited = self.by_type, Counter(), defaultdict(float)
        return out

    def fanout_wait(self) -> float:
        """Seconds waiting for fan-out answers so far (fan-outs go one at a time)."""
        return self.waited["Fanout"]


def _kib(counts: Counter[str]) -> str:
    parts = ", ".join(f"{name} {n / 1024:.0f}" for name, n in counts.most_common())
    return f"{sum(counts.values()) / 1024:.0f} KiB ({parts})"


async def _befriend_all(sender: Client, members: list[Member]) -> list[str]:
    names = []
    for i, member in enumerate(members):
        await sender.add_contact(encode_invite(Invite(version=1, card=member.card)), f"m{i}")
        names.append(f"m{i}")
    return names


async def _check_sample(
    link: str, members: list[Member], texts: list[str], sample: int, cards: int
) -> int:
    """Fetch and decrypt the mailbox of ``sample`` member devices; returns devices checked."""
    signed = decode_server_link(link).descriptor
    server_key = open_descriptor(signed, now_ms()).server_key
    checked = 0
    for member in members[:sample]:
        account, sealing = member.accounts[-1], member.sealing[-1]
        conn = await Connection.open(signed, server_key)
        try:
            proof = auth_proof(account, server_key, conn.welcome.nonce)
            device_id = device_keys(account, sealing).device_id
            await conn.call(frames.Auth(rid=0, device_id=device_id, proof=proof), frames.AuthOk)
            await conn.call(frames.Subscribe(rid=0, after=0), frames.Ok)
            inbound: dict[str, MegolmInbound] = {}
            sessions: dict[bytes, OlmSession] = {}
            got: list[str] = []
            seen_cards = 0
            while len(got) < len(texts):
                deliver = await conn.next_delivery(10.0)
                if deliver is None:
                    break
                seq = 0
                for entry in deliver.entries:
                    seq = entry.seq
                    box = decode_group_box(entry.body)
                    if box is not None:
                        plaintext, _ = inbound[box.session_id].decrypt(box.megolm)
                        text = decode_group_text(unpad(plaintext))
                        if text.state is None and not text.cards:
                            got.append(text.text)
                        seen_cards += len(text.cards)
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
                await conn.call(frames.Ack(rid=0, up_to=seq), frames.Ok)
            assert got == texts, (got, texts)
            assert seen_cards >= cards, (seen_cards, cards)
            checked += 1
        finally:
            await conn.close()
    return checked


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass(frozen=True)
class ServerCost:
    """The server process's CPU seconds and bytes handed to write() so far (Linux /proc)."""

    cpu_s: float
    written: int

    @classmethod
    def of(cls, pid: int) -> ServerCost:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
        return cls(ticks / os.sysconf("SC_CLK_TCK"), int(io["wchar"]))

    def since(self, before: ServerCost) -> str:
        return (
            f"server CPU {self.cpu_s - before.cpu_s:.2f} s,"
            f" server wrote {(self.written - before.written) / 2**20:.1f} MiB"
        )


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, link = start_server(root / "server", ["--store", args.store] if args.store else [])
        try:
            t0 = time.perf_counter()
            members = await _register_members(link, args.users + 1, args.devices_per_user)
            newcomer, members = members[-1], members[:-1]
            setup = time.perf_counter() - t0
            sender = await Client.create(root / "sender", PASSPHRASE, link, "sender")
            try:
                names = await _befriend_all(sender, members)
                newcomer_name = "newcomer"
                await sender.add_contact(
                    encode_invite(Invite(version=1, card=newcomer.card)), newcomer_name
                )
                print(
                    f"setup: {len(members)} users x {args.devices_per_user} devices registered"
                    f" and added as contacts in {setup:.1f} s (not part of the figures)"
                )
                uploads = Uploads()
                db_before = _du(root / "server")
                cost = ServerCost.of(proc.pid)
                start = time.perf_counter()
                name = await groups.create(sender, "bench", names)
                created_s = time.perf_counter() - start
                fanout_s = uploads.fanout_wait()
                created = uploads.take()
                db_growth = _du(root / "server") - db_before
                create_cost = ServerCost.of(proc.pid).since(cost)
                devices = len(members) * args.devices_per_user
                print(f"member devices: {devices} (+ the admin's)")
                print(
                    f"create (Olm sessions from claimed keys, room key to every device, state"
                    f" + {len(members) + 1} cards fanned out): {created_s * 1000:.0f} ms;"
                    f" uploaded {_kib(created)}; server data grew {db_growth / 2**20:.0f} MiB;"
                    f" {fanout_s * 1000:.0f} ms of it waiting for the state fan-outs to be stored;"
                    f" {create_cost}"
                )
                texts: list[str] = []
                rows = []
                cost = ServerCost.of(proc.pid)
                for i in range(args.messages):
                    text = f"message {i}"
                    start = time.perf_counter()
                    stats = await groups.send(sender, name, text)
                    rows.append((time.perf_counter() - start, stats, uploads.take()))
                    texts.append(text)
                messages_cost = ServerCost.of(proc.pid).since(cost)
                first_s, first, first_up = rows[0]
                print(
                    f"first message (room keys already shared at create):"
                    f" {first_s * 1000:.0f} ms; uploaded {_kib(first_up)}"
                )
                rest = rows[1:]
                if rest:
                    times = sorted(r[0] for r in rest)
                    up = sum(sum(r[2].values()) for r in rest) / len(rest)
                    print(
                        f"next {len(rest)} messages: median {times[len(times) // 2] * 1000:.1f} ms,"
                        f" max {times[-1] * 1000:.1f} ms; uploaded {up / 1024:.1f} KiB each"
                        f" (one fanout: one Megolm body + the recipient list)"
                    )
                print(f"all {len(rows)} messages: {messages_cost}")
                # A rotation (as after a removal or 100 messages): a new Megolm session whose
                # key goes to every device over the Olm sessions made at create.
                with sender._store.locked():
                    sender._store.delete("gout", sender._store.get("gname", name) or b"")
                start = time.perf_counter()
                stats = await groups.send(sender, name, "after rotation")
                rotated_s = time.perf_counter() - start
                rotated_up = uploads.take()
                texts.append("after rotation")
                assert stats.rotated and stats.room_keys_sent == devices
                print(
                    f"first message of a new session (room key to {stats.room_keys_sent} devices"
                    f" over existing Olm sessions): {rotated_s * 1000:.0f} ms;"
                    f" uploaded {_kib(rotated_up)}"
                )
                start = time.perf_counter()
                await groups.add(sender, name, [newcomer_name])
                added_s = time.perf_counter() - start
                print(
                    f"add one member ({args.devices_per_user} devices): {added_s * 1000:.0f} ms;"
                    f" uploaded {_kib(uploads.take())} (its card to everyone, every card"
                    f" to it)"
                )
                checked = await _check_sample(link, members, texts, args.sample, len(members))
                print(
                    f"decrypted by {checked} sampled member devices: the state with every card"
                    f" and all {len(texts)} messages"
                )
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
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="postgresql://...?search_path=SCHEMA (a fresh schema; default: SQLite). The"
        " server CPU and bytes printed are then the samizdat process's only",
    )
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
