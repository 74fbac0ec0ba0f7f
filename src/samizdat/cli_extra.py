"""``samizdat devices|group|verify|trust`` (DESIGN §1): kept apart so cli.py stays small.

Talks only to ``samizdat.client``. ``--yes`` skips the "do the codes match?" prompt (for
scripts and tests, which compare the printed codes themselves).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from samizdat import cli_reach
from samizdat.cli_common import home as _home
from samizdat.cli_common import out as _out
from samizdat.cli_common import passphrase as _passphrase
from samizdat.cli_reach import open_client as _open
from samizdat.client import devices, groups, verification
from samizdat.crypto.sas import SasCode

__all__ = ["add_extension_commands"]


def _confirmer(args: argparse.Namespace, label: str) -> devices.Confirm:
    async def confirm(code: SasCode) -> bool:
        if args.json:
            _out(json.dumps({"sas": str(code), "emoji": list(code.emoji)}))
        else:
            _out(f"{label}: {code}")
            _out("emoji: " + ", ".join(code.emoji))
        if args.yes:
            return True
        answer = await asyncio.to_thread(input, "do both devices show the same code? [y/N] ")
        return answer.strip().lower() in {"y", "yes"}

    return confirm


# -- devices ----------------------------------------------------------------------------


async def _devices_link(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        offer = await devices.start_link(client)
        if args.json:
            _out(json.dumps({"code": offer.code}))
        else:
            _out("on the new device run:  samizdat devices join CODE   with this code:")
            _out(offer.code)
            import segno

            segno.make(offer.code, error="L").terminal(compact=True)
        linked = await devices.finish_link(
            client, offer, _confirmer(args, "confirm this code"), args.timeout
        )
    _out(json.dumps({"linked": linked.id}) if args.json else f"linked device {linked.id[:12]}")
    return 0


async def _devices_join(args: argparse.Namespace) -> int:
    client = await devices.join(
        _home(args),
        _passphrase(confirm=True),
        args.code,
        _confirmer(args, "confirm this code"),
        args.timeout,
        cli_reach.transport_options(args),
    )
    async with client:
        own = client._identity.device_id.hex()
    _out(json.dumps({"joined": own}) if args.json else f"this device is {own[:12]}")
    return 0


async def _devices_list(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        found = devices.list_devices(client)
    if args.json:
        _out(json.dumps([{"id": d.id, "current": d.current} for d in found]))
        return 0
    for d in found:
        _out(f"{d.id[:12]}{'  (this device)' if d.current else ''}")
    return 0


async def _devices_revoke(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        gone = await devices.revoke(client, args.id)
    _out(f"revoked {gone[:12]}")
    return 0


# -- groups -----------------------------------------------------------------------------


async def _group_create(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        name = await groups.create(client, args.name, args.members)
    _out(f"created group {name}")
    return 0


async def _group_add(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        await groups.add(client, args.group, args.contacts)
    _out(f"added {', '.join(args.contacts)} to {args.group}")
    return 0


async def _group_remove(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        await groups.remove(client, args.group, args.contacts)
    _out(f"removed {', '.join(args.contacts)} from {args.group}")
    return 0


async def _group_admin(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        await groups.promote(client, args.group, args.contacts)
    _out(f"{', '.join(args.contacts)} now admin of {args.group}")
    return 0


async def _group_leave(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        await groups.leave(client, args.group)
    _out(f"left {args.group}")
    return 0


async def _group_rename(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        name = await groups.rename(client, args.group, args.new_name)
    _out(f"renamed to {name}")
    return 0


async def _group_members(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        found = groups.members(client, args.group)
    if args.json:
        _out(json.dumps([{"name": m.name, "admin": m.admin, "you": m.you} for m in found]))
        return 0
    for m in found:
        _out(f"{m.name}{' (admin)' if m.admin else ''}{' (you)' if m.you else ''}")
    return 0


async def _group_list(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        found = groups.list_groups(client)
    if args.json:
        rows = [
            {"name": g.name, "members": g.members, "admin": g.admin, "active": g.active}
            for g in found
        ]
        _out(json.dumps(rows))
        return 0
    for g in found:
        _out(f"{g.name}\t{g.members} members{'' if g.active else '  (left)'}")
    return 0


async def _cmd_group_history(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        items = groups.history(client, args.name)
    if args.json:
        rows: list[dict[str, Any]] = [
            {
                "author": i.author,
                "direction": i.direction,
                "text": i.text,
                "id": i.id,
                "sent_at": i.sent_at,
            }
            for i in items
        ]
        _out(json.dumps(rows))
        return 0
    for i in items:
        _out(f"{'me' if i.direction == 'out' else i.author}: {i.text}")
    return 0


# -- verification -----------------------------------------------------------------------


async def _verify(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        if args.manual:
            verification.mark_verified(client, args.name)
            _out(f"{args.name} is verified")
            return 0
        await verification.verify(
            client, args.name, _confirmer(args, "compare with your contact"), args.timeout
        )
    _out(f"{args.name} is verified")
    return 0


async def _trust(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        verification.trust(client, args.name)
    _out(f"sending to {args.name} is allowed again (not verified)")
    return 0


def add_extension_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def flags(p: argparse.ArgumentParser, confirm: bool = False) -> None:
        p.add_argument("--json", action="store_true")
        if confirm:
            p.add_argument("--yes", action="store_true", help="do not ask to confirm the code")
            p.add_argument("--timeout", type=float, default=300.0)

    devices_p = sub.add_parser("devices", help="link, list and revoke this user's devices")
    dsub = devices_p.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    p = dsub.add_parser("link", help="show a code for a new device and wait for it")
    flags(p, confirm=True)
    p.set_defaults(handler=_devices_link)
    p = dsub.add_parser("join", help="make this (new) device a device of the code's user")
    p.add_argument("code")
    flags(p, confirm=True)
    p.set_defaults(handler=_devices_join)
    p = dsub.add_parser("list", help="this user's devices")
    flags(p)
    p.set_defaults(handler=_devices_list)
    p = dsub.add_parser("revoke", help="remove a device (by id prefix) from the user")
    p.add_argument("id")
    p.set_defaults(handler=_devices_revoke)

    group_p = sub.add_parser("group", help="group chats")
    gsub = group_p.add_subparsers(dest="group_command", required=True, metavar="ACTION")
    p = gsub.add_parser("create", help="create a group with some contacts")
    p.add_argument("name")
    p.add_argument("members", nargs="*", help="contact names")
    p.set_defaults(handler=_group_create)
    for action, handler, text in (
        ("add", _group_add, "add contacts (admins)"),
        ("remove", _group_remove, "remove members (admins)"),
        ("admin", _group_admin, "make members admins (admins)"),
    ):
        p = gsub.add_parser(action, help=text)
        p.add_argument("group")
        p.add_argument("contacts", nargs="+")
        p.set_defaults(handler=handler)
    p = gsub.add_parser("leave", help="leave a group")
    p.add_argument("group")
    p.set_defaults(handler=_group_leave)
    p = gsub.add_parser("rename", help="rename a group (admins)")
    p.add_argument("group")
    p.add_argument("new_name")
    p.set_defaults(handler=_group_rename)
    p = gsub.add_parser("members", help="who is in a group")
    p.add_argument("group")
    flags(p)
    p.set_defaults(handler=_group_members)
    p = gsub.add_parser("list", help="your groups")
    flags(p)
    p.set_defaults(handler=_group_list)

    p = sub.add_parser("verify", help="verify a contact (SAS; both run it at once)")
    p.add_argument("name")
    p.add_argument(
        "--manual", action="store_true", help="you compared the safety number: mark verified"
    )
    flags(p, confirm=True)
    p.set_defaults(handler=_verify)
    p = sub.add_parser("trust", help="allow sending to a contact whose key changed")
    p.add_argument("name")
    p.set_defaults(handler=_trust)
