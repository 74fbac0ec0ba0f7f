"""``samizdat ui``: the messenger in the browser, served by this process (web/)."""

from __future__ import annotations

import argparse

from samizdat import cli_reach
from samizdat.cli_common import home, passphrase
from samizdat.cli_common import out as _out
from samizdat.client.store import Store

__all__ = ["add_commands"]


async def _cmd_ui(args: argparse.Namespace) -> int:
    from samizdat.web.run import serve

    folder = home(args)
    # A new home asks twice: the passphrase protects the identity the page will create.
    # --unlock-in-browser: no terminal prompt (a desktop launcher has no terminal); the
    # page's unlock screen asks instead.
    secret = None if args.unlock_in_browser else passphrase(confirm=not Store.exists(folder))

    def announce(url: str) -> None:
        _out(f"samizdat ui: open {url}")
        _out("(this address holds the access token: do not share it; Ctrl-C stops)")

    await serve(
        folder,
        secret,
        cli_reach.transport_options(args),
        args.port,
        open_browser=not args.no_browser,
        announce=announce,
    )
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ui", help="the messenger in your browser (served on 127.0.0.1 only)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free)")
    p.add_argument("--no-browser", action="store_true", help="only print the address")
    p.add_argument(
        "--unlock-in-browser",
        action="store_true",
        help="ask for the passphrase in the page, not on the terminal",
    )
    p.set_defaults(handler=_cmd_ui)
