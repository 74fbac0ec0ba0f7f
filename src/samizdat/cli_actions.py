"""``samizdat reply|react|edit|delete|read|timer|settings`` and ``history`` (protocol §6.2).

Message actions on the command line; talks only to ``samizdat.client``. Message ids are
the hex ids ``history --json`` and ``listen --json`` print. ``--group`` makes NAME a group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from samizdat import cli_files
from samizdat.cli_common import out
from samizdat.cli_reach import open_client
from samizdat.client import actions, timers
from samizdat.client.actions import MessageView
from samizdat.errors import ConnectError

__all__ = ["add_commands", "cmd_history"]


def _row(view: MessageView) -> dict[str, Any]:
    return {
        "author": view.author,
        "direction": view.direction,
        "text": view.text,
        "id": view.id,
        "sent_at": view.sent_at,
        "received_at": view.received_at,
        "reply_to": view.reply_to,
        "reactions": view.reactions,
        "edited": view.edited,
        "edits": view.edits,
        "deleted": view.deleted,
        "delivered_to": view.delivered_to,
        "read_by": view.read_by,
        "expires_at": view.expires_at,
        "attachment": cli_files.as_json(view.attachment),
    }


def _line(view: MessageView, by_id: dict[str, MessageView]) -> str:
    who = "me" if view.direction == "out" else view.author
    if view.deleted:
        return f"{who}: (this message was deleted)  [{view.id[:8]}]"
    parts = [f"{who}: {view.text}"]
    if view.attachment is not None:
        parts.append(cli_files.describe(view.attachment))
    if view.reply_to is not None:
        quoted = by_id.get(view.reply_to)
        parts.insert(0, f"> {quoted.text[:40] if quoted else '(a message not here)'}\n ")
    if view.edited:
        parts.append("(edited)")
    if view.reactions:
        parts.append(" ".join(f"{e} {n}" for n, e in sorted(view.reactions.items())))
    if view.direction == "out":
        if view.read_by:
            parts.append("read by " + ", ".join(view.read_by))
        elif view.delivered_to:
            parts.append("delivered to " + ", ".join(view.delivered_to))
    if view.expires_at is not None:
        parts.append("(disappears)")
    parts.append(f"[{view.id[:8]}]")
    return " ".join(parts)


async def cmd_history(args: argparse.Namespace) -> int:
    """The conversation with replies, reactions, edits, deletions and receipts."""
    async with await open_client(args) as client:
        views = actions.conversation(client, args.name, args.group)
        seconds = timers.timer(client, args.name, args.group)
    if args.json:
        out(json.dumps([_row(v) for v in views]))
        return 0
    if seconds:
        out(f"(messages here disappear {seconds} seconds after they are sent)")
    by_id = {v.id: v for v in views}
    for view in views:
        out(_line(view, by_id))
    return 0


@contextlib.asynccontextmanager
async def _queued() -> AsyncIterator[None]:
    """Say that an action that did not reach the server yet is queued, not lost."""
    try:
        yield
    except ConnectError as exc:
        raise ConnectError(
            f"{exc} — not delivered yet; it is queued and goes out on the next send or listen"
        ) from exc


async def _reply(args: argparse.Namespace) -> int:
    async with await open_client(args) as client, _queued():
        msg_id = await actions.reply(client, args.name, args.id, args.text, args.group)
    out(msg_id)
    return 0


async def _react(args: argparse.Namespace) -> int:
    async with await open_client(args) as client, _queued():
        await actions.react(
            client, args.name, args.id, "" if args.remove else args.emoji, args.group
        )
    return 0


async def _edit(args: argparse.Namespace) -> int:
    async with await open_client(args) as client, _queued():
        await actions.edit(client, args.name, args.id, args.text, args.group)
    return 0


async def _delete(args: argparse.Namespace) -> int:
    async with await open_client(args) as client, _queued():
        await actions.delete(client, args.name, args.id, args.group)
    return 0


async def _read(args: argparse.Namespace) -> int:
    async with await open_client(args) as client:
        count = await actions.mark_read(client, args.name, args.group)
    out(f"{count} marked read")
    return 0


async def _timer(args: argparse.Namespace) -> int:
    async with await open_client(args) as client, _queued():
        if args.seconds is not None:
            await timers.set_timer(client, args.name, args.seconds, args.group)
        seconds = timers.timer(client, args.name, args.group)
    shown = f"disappearing messages: {f'{seconds} seconds' if seconds else 'off'}"
    out(json.dumps({"timer": seconds}) if args.json else shown)
    return 0


_SETTINGS = {
    "read-receipts": (actions.read_receipts, actions.set_read_receipts),
    "delivery-receipts": (actions.delivery_receipts, actions.set_delivery_receipts),
}


async def _settings(args: argparse.Namespace) -> int:
    get, put = _SETTINGS[args.setting]
    async with await open_client(args) as client:
        if args.value is not None:
            put(client, args.value == "on")
        on = get(client)
    out(f"{args.setting}: {'on' if on else 'off'}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def conv(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", help="a contact (or a group, with --group)")
        p.add_argument("--group", action="store_true", help="NAME is a group")

    p = sub.add_parser("reply", help="reply to a message, quoting it")
    conv(p)
    p.add_argument("id", help="the message id (history --json)")
    p.add_argument("text")
    p.set_defaults(handler=_reply)

    p = sub.add_parser("react", help="react to a message (one reaction per person)")
    conv(p)
    p.add_argument("id")
    p.add_argument("emoji", nargs="?", default="")
    p.add_argument("--remove", action="store_true", help="remove your reaction")
    p.set_defaults(handler=_react)

    p = sub.add_parser("edit", help="change the text of one of your messages, for everyone")
    conv(p)
    p.add_argument("id")
    p.add_argument("text")
    p.set_defaults(handler=_edit)

    p = sub.add_parser("delete", help="delete one of your messages for everyone")
    conv(p)
    p.add_argument("id")
    p.set_defaults(handler=_delete)

    p = sub.add_parser("read", help="mark a conversation read (sends read receipts if on)")
    conv(p)
    p.set_defaults(handler=_read)

    p = sub.add_parser("timer", help="show or set the disappearing-message timer")
    conv(p)
    p.add_argument("seconds", nargs="?", type=int, help="0 turns it off")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_timer)

    p = sub.add_parser("settings", help="show or change settings")
    p.add_argument("setting", choices=sorted(_SETTINGS))
    p.add_argument("value", nargs="?", choices=["on", "off"])
    p.set_defaults(handler=_settings)
