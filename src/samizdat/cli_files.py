"""Files on the command line: ``send NAME --file PATH`` and ``download ID [--out PATH]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from samizdat.cli_common import out
from samizdat.cli_reach import open_client
from samizdat.client import attachments
from samizdat.client.attachments import AttachmentInfo

__all__ = ["add_commands", "send_file", "describe", "as_json"]


def describe(info: AttachmentInfo) -> str:
    """How ``history`` and ``listen`` show a file."""
    return f"[file {info.name or 'unnamed'} ({info.media_type}, {info.size} bytes)]"


def as_json(info: AttachmentInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "name": info.name,
        "size": info.size,
        "media_type": info.media_type,
        "expires_at": info.expires_at,
    }


async def send_file(args: argparse.Namespace) -> str:
    """``send NAME [CAPTION] --file PATH [--group]``; returns the message id."""
    async with await open_client(args) as client:
        return await attachments.send_file(
            client, args.name, Path(args.file), args.text or "", group=args.group
        )


async def _cmd_download(args: argparse.Namespace) -> int:
    async with await open_client(args) as client:
        path = await attachments.download(
            client, args.id, None if args.out is None else Path(args.out)
        )
    out(str(path))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "download", help="fetch, decrypt and check the file of a message (by its id)"
    )
    p.add_argument("id", help="the message id that `history --json` or `listen --json` shows")
    p.add_argument("--out", default=None, metavar="PATH", help="where to write it")
    p.set_defaults(handler=_cmd_download)
