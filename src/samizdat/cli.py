"""The ``samizdat`` command line (DESIGN §1). Talks only to ``samizdat.client``.

Scripting interface (tests rely on it): ``--home DIR`` or ``SAMIZDAT_HOME`` picks the
home folder; ``SAMIZDAT_PASSPHRASE`` gives the passphrase without a prompt. Expected
errors print one line to stderr and exit 1 (2 for usage errors); ``send`` exits 0 only
once the message is durable on the recipient's server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from samizdat import __version__, cli_actions, cli_files, cli_reach, cli_relay, cli_ui
from samizdat.cli_common import home as _home
from samizdat.cli_common import out as _out
from samizdat.cli_common import passphrase as _passphrase
from samizdat.cli_extra import add_extension_commands
from samizdat.cli_reach import open_client as _open
from samizdat.client import groups, timers, verification
from samizdat.client.app import Client
from samizdat.crypto.safety import format_safety_number
from samizdat.errors import ConnectError, SamizdatError

__all__ = ["main", "build_parser"]

_Handler = Callable[[argparse.Namespace], Coroutine[object, object, int]]


class _UsageError(Exception):
    pass


async def _cmd_init(args: argparse.Namespace) -> int:
    client = await Client.create(
        _home(args),
        _passphrase(confirm=True),
        args.server,
        args.name,
        cli_reach.transport_options(args),
    )
    async with client:
        _out(f"created identity {client.name!r} in {_home(args)}")
    return 0


async def _cmd_invite(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        link = await client.invite()
    if args.json:
        _out(json.dumps({"link": link}))
        return 0
    _out(link)
    import segno

    segno.make(link, error="L").terminal(compact=True)
    return 0


async def _cmd_add(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        if args.replace:
            if verification.replace_contact(client, args.link, args.name):
                _out(
                    f"WARNING: the key of verified contact {args.name} CHANGED. Compare the "
                    f"safety number again; sending waits for `samizdat trust {args.name}`."
                )
            _out(f"updated {args.name}")
            return 0
        await client.add_contact(args.link, args.name)
    _out(f"added {args.name}")
    return 0


async def _cmd_send(args: argparse.Namespace) -> int:
    if args.file is not None:
        _out(await cli_files.send_file(args))
        return 0
    if args.text is None:
        raise _UsageError("send needs TEXT or --file PATH")
    async with await _open(args) as client:
        if args.group:
            msg_id = (await groups.send(client, args.name, args.text)).msg_id
        else:
            try:
                msg_id = await client.send(args.name, args.text)
            except ConnectError as exc:
                raise ConnectError(
                    f"{exc} — not delivered yet; it is queued and goes first on the next send"
                ) from exc
    _out(msg_id)
    return 0


async def _cmd_listen(args: argparse.Namespace) -> int:
    # Disappearing messages are deleted every second while listening (client/timers.py).
    async with await _open(args) as client, timers.sweeping(client):
        async for message in client.listen(count=args.count, timeout=args.timeout):
            if args.json:
                _out(
                    json.dumps(
                        {
                            "from": message.sender,
                            "text": message.text,
                            "id": message.id,
                            "sent_at": message.sent_at,
                            "request": message.request,
                            "group": message.group,
                            "attachment": cli_files.as_json(message.attachment),
                        }
                    )
                )
            else:
                mark = " (request: `samizdat accept NAME` to accept)" if message.request else ""
                where = f"[{message.group}] " if message.group else ""
                file = f" {cli_files.describe(message.attachment)}" if message.attachment else ""
                _out(f"{where}{message.sender}: {message.text}{file}{mark}")
    return 0


async def _cmd_history(args: argparse.Namespace) -> int:
    if args.group or not args.plain:
        # Replies, reactions, edits, deletions and receipts applied (cli_actions.py).
        return await cli_actions.cmd_history(args)
    async with await _open(args) as client:
        items = client.history(args.name)
    if args.json:
        rows = [
            {
                "direction": i.direction,
                "text": i.text,
                "id": i.id,
                "sent_at": i.sent_at,
                "received_at": i.received_at,
                "attachment": cli_files.as_json(i.attachment),
            }
            for i in items
        ]
        _out(json.dumps(rows))
        return 0
    for item in items:
        who = "me" if item.direction == "out" else args.name
        file = f" {cli_files.describe(item.attachment)} id {item.id}" if item.attachment else ""
        _out(f"{who}: {item.text}{file}")
    return 0


async def _cmd_safety(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        _out(format_safety_number(client.safety_number(args.name)))
        if args.qr:
            import segno

            segno.make(verification.safety_qr_text(client, args.name), error="M").terminal(
                compact=True
            )
    return 0


async def _cmd_accept(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        await client.accept(args.name)
    _out(f"accepted {args.name}")
    return 0


async def _cmd_block(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        await client.block(args.name)
    _out(f"blocked {args.name}")
    return 0


async def _cmd_contacts(args: argparse.Namespace) -> int:
    async with await _open(args) as client:
        contacts = client.contacts()
    if args.json:
        rows = [{"name": c.name, "state": c.state, "answered": c.answered} for c in contacts]
        _out(json.dumps(rows))
        return 0
    for contact in contacts:
        _out(f"{contact.name}\t{contact.state}")
    return 0


async def _cmd_demo(args: argparse.Namespace) -> int:
    from samizdat.client.demo import run_demo

    return await run_demo(keep=args.keep)


def _cmd_server(args: argparse.Namespace) -> int:
    from samizdat.errors import LocalError
    from samizdat.server.app import ServerConfig, parse_listen, run

    try:
        host, port = parse_listen(args.listen)
    except LocalError as exc:
        raise _UsageError(str(exc)) from exc
    config = ServerConfig(data_dir=Path(args.data_dir), host=host, port=port)
    if args.max_mailbox_entries is not None:
        config = replace(config, max_mailbox_entries=args.max_mailbox_entries)
    if args.mailbox_ttl_days is not None:
        config = replace(config, mailbox_ttl_days=args.mailbox_ttl_days)
    if args.blob_quota is not None:
        config = replace(config, blob_quota_bytes=args.blob_quota)
    # Scale-out (docs/scaling.md): shared store, bus, identity and the cluster's endpoints.
    config = replace(
        config,
        store_url=args.store,
        bus_url=args.bus,
        extra_endpoints=tuple(args.endpoint),
        identity_dir=None if args.identity_dir is None else Path(args.identity_dir),
        public_host=args.public_host,
        relays=tuple(args.relay),
    )
    if args.log_level is not None:
        config = replace(config, log_level=args.log_level)
    if args.token_rate is not None or args.connection_rate is not None:
        from samizdat.server.ratelimit import RateLimits

        limits = RateLimits()
        if args.token_rate is not None:
            limits = replace(
                limits, token_rate=args.token_rate, token_burst=max(1.0, args.token_rate * 10)
            )
        if args.connection_rate is not None:
            limits = replace(
                limits,
                connection_rate=args.connection_rate,
                connection_burst=max(1.0, args.connection_rate * 4),
            )
        config = replace(config, rate_limits=limits)
    run(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    add_extension_commands(sub)
    cli_ui.add_commands(sub)
    cli_files.add_commands(sub)
    cli_actions.add_commands(sub)
    return parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samizdat", description="An end-to-end encrypted messenger that is hard to block."
    )
    parser.add_argument("--version", action="version", version=f"samizdat {__version__}")
    parser.add_argument("--home", help="home folder (default: $SAMIZDAT_HOME or ~/.samizdat)")
    cli_reach.add_global_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_reach.add_commands(sub, _open)
    cli_relay.add_commands(sub, _open)

    p = sub.add_parser("server", help="run a server")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT (port 0: any)")
    p.add_argument("--max-mailbox-entries", type=int, default=None, metavar="N")
    p.add_argument(
        "--mailbox-ttl-days",
        type=float,
        default=None,
        metavar="DAYS",
        help="delete entries nobody fetched within DAYS (default 30)",
    )
    p.add_argument(
        "--blob-quota",
        type=int,
        default=None,
        metavar="BYTES",
        help="attachment bytes one device may keep on this server (default 1 GiB)",
    )
    p.add_argument(
        "--store", default=None, metavar="URL", help="postgresql://... (default: SQLite)"
    )
    p.add_argument("--bus", default=None, metavar="URL", help="redis://... to wake other nodes")
    p.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="URL",
        help="another node's wss:// URL to list in the descriptor (repeatable)",
    )
    p.add_argument(
        "--public-host",
        default=None,
        metavar="HOST",
        help="name or address clients use for this server's own endpoint (default: --listen)",
    )
    p.add_argument(
        "--identity-dir",
        default=None,
        metavar="DIR",
        help="server key and TLS files shared by the nodes (default: the data dir)",
    )
    p.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="LINK",
        help="a samizdat:relay/... link to list in the descriptor (repeatable)",
    )
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--token-rate",
        type=float,
        default=None,
        metavar="PER_S",
        help="deposits and key claims per second per delivery token (default 20)",
    )
    p.add_argument(
        "--connection-rate",
        type=float,
        default=None,
        metavar="PER_S",
        help="frames per second per connection (default 100)",
    )

    p = sub.add_parser("init", help="create an identity on this device")
    p.add_argument("--server", required=True, help="the server's samizdat:server/... link")
    p.add_argument("--name", required=True, help="the name contacts see")
    p.set_defaults(handler=_cmd_init)

    p = sub.add_parser("invite", help="print an invite link (and QR code) for a new contact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_invite)

    p = sub.add_parser("add", help="add a contact from their invite link")
    p.add_argument("link")
    p.add_argument("--name", required=True)
    p.add_argument(
        "--replace", action="store_true", help="the contact NAME has a new identity (key change)"
    )
    p.set_defaults(handler=_cmd_add)

    p = sub.add_parser("send", help="send a message; exits 0 once it is stored on their server")
    p.add_argument("name")
    p.add_argument("text", nargs="?", default=None, help="the message (a caption with --file)")
    p.add_argument("--group", action="store_true", help="NAME is a group")
    p.add_argument("--file", default=None, metavar="PATH", help="send a file (up to 100 MiB)")
    p.set_defaults(handler=_cmd_send)

    p = sub.add_parser("listen", help="print messages as they arrive")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, default=None, help="stop after N messages")
    p.add_argument(
        "--timeout", type=float, default=None, help="stop after S seconds without a message"
    )
    p.set_defaults(handler=_cmd_listen)

    p = sub.add_parser("history", help="show the conversation (--json: one JSON array)")
    p.add_argument("name")
    p.add_argument("--group", action="store_true", help="NAME is a group")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plain", action="store_true", help="messages as stored, no actions applied")
    p.set_defaults(handler=_cmd_history)

    p = sub.add_parser("safety-number", help="show the safety number with a contact")
    p.add_argument("name")
    p.add_argument("--qr", action="store_true", help="also show it as a QR code")
    p.set_defaults(handler=_cmd_safety)

    p = sub.add_parser("accept", help="accept a contact request")
    p.add_argument("name")
    p.set_defaults(handler=_cmd_accept)

    p = sub.add_parser("block", help="block a contact or request")
    p.add_argument("name")
    p.set_defaults(handler=_cmd_block)

    p = sub.add_parser("contacts", help="list contacts, requests, blocked (--json: an array)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_contacts)

    p = sub.add_parser("demo", help="run a local server, two users and show what it stores")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "server":
            code = _cmd_server(args)
        else:
            handler: _Handler = args.handler
            code = asyncio.run(handler(args))
    except _UsageError as exc:
        parser.exit(2, f"samizdat: error: {exc}\n")
    except SamizdatError as exc:
        parser.exit(1, f"samizdat: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "\n")
    sys.exit(code)
