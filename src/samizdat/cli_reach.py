"""``samizdat probe``, ``samizdat status`` and the global ``--proxy``/``--dns-server``/``--doh``
flags (DESIGN §6, docs/censorship.md). Talks only to ``samizdat.client``."""

from __future__ import annotations

import argparse
import json
import os
import ssl
from collections.abc import Awaitable, Callable

from samizdat.cli_common import home, passphrase
from samizdat.cli_common import out as _out
from samizdat.client.app import Client
from samizdat.client.reach import descriptor_from_link
from samizdat.errors import LocalError, ProtocolError
from samizdat.protocol.descriptor import open_descriptor
from samizdat.transport import (
    DEFAULT_DOH,
    TransportOptions,
    parse_dns_server,
    parse_proxy,
    proxy_from_env,
)
from samizdat.transport.dial import now_ms
from samizdat.transport.probe import probe

__all__ = ["add_global_arguments", "add_commands", "transport_options"]


def add_global_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that apply to every command that talks to a server (give them before it)."""
    parser.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="socks5://HOST:PORT or http://HOST:PORT; everything goes through it "
        "(default: $ALL_PROXY or $HTTPS_PROXY)",
    )
    parser.add_argument(
        "--dns-server",
        default=None,
        metavar="HOST:PORT",
        help="ask this DNS server instead of the system resolver",
    )
    parser.add_argument(
        "--doh",
        action="append",
        default=None,
        metavar="URL",
        help="a DNS-over-HTTPS service (repeatable; 'none' for none; "
        f"default {', '.join(DEFAULT_DOH)} or $SAMIZDAT_DOH)",
    )
    parser.add_argument(
        "--doh-ca", default=None, metavar="FILE", help="trust this CA for DoH services"
    )


async def open_client(args: argparse.Namespace) -> Client:
    """Open the local client named by the global flags, reaching servers as they say."""
    return await Client.open(home(args), passphrase(), transport_options(args))


def transport_options(args: argparse.Namespace) -> TransportOptions:
    """The options the global flags and the environment give.

    Raises:
        LocalError: a flag is malformed.
    """
    proxy = parse_proxy(args.proxy) if args.proxy else proxy_from_env()
    try:
        dns_server = parse_dns_server(args.dns_server) if args.dns_server else None
    except ValueError as exc:
        raise LocalError(str(exc)) from exc
    if args.doh is not None:
        doh = tuple(u for u in args.doh if u != "none")
    elif "SAMIZDAT_DOH" in os.environ:
        doh = tuple(u.strip() for u in os.environ["SAMIZDAT_DOH"].split(",") if u.strip())
    else:
        doh = DEFAULT_DOH
    verify = None
    if args.doh_ca:
        verify = ssl.create_default_context(cafile=args.doh_ca)
    return TransportOptions(proxy=proxy, dns_server=dns_server, doh=doh, doh_verify=verify)


async def _cmd_probe(args: argparse.Namespace) -> int:
    options = transport_options(args)
    if args.link:
        signed = descriptor_from_link(args.link)
        try:
            key = open_descriptor(signed, now_ms()).server_key
        except ProtocolError as exc:
            raise LocalError(f"the link's descriptor does not verify: {exc.message}") from exc
    else:
        client = await args.open_client(args)
        async with client:
            signed, key = client.own_descriptor()
    report = await probe(signed, key, options)
    if args.json:
        _out(json.dumps(report.as_json()))
        return 0 if report.ok else 1
    for lookup in report.lookups:
        result = ", ".join(lookup.addresses) if lookup.ok else lookup.failure
        _out(f"{lookup.resolver:6} {lookup.host}: {result} ({lookup.ms:.0f} ms)")
    for a in report.attempts:
        stages = "  ".join(
            f"{s.name} {'ok' if s.ok else s.detail or 'failed'} {s.ms:.0f}ms" for s in a.stages
        )
        _out(f"{'OK ' if a.ok else 'NO '} {a.candidate.label}: {stages}")
    _out(report.sentence)
    return 0 if report.ok else 1


async def _cmd_status(args: argparse.Namespace) -> int:
    client = await args.open_client(args)
    async with client:
        conn = await client.route()
        c = conn.candidate
        info = {
            "server": "connected",
            "transport": c.transport if c else "",
            "endpoint": c.url if c else "",
            "resolver": c.resolver if c else "",
            "route": c.route.label if c else "",
            "address": next((a.address for a in conn.attempts if a.ok), ""),
            "failed": [f"{a.candidate.label}: {a.failure}" for a in conn.attempts if a.failure],
        }
    if args.json:
        _out(json.dumps(info))
        return 0
    _out(f"connected: {c.label if c else 'unknown'}")
    for line in info["failed"]:
        _out(f"  failed first: {line}")
    return 0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    open_client: Callable[[argparse.Namespace], Awaitable[Client]],
) -> None:
    """``probe`` and ``status``; ``open_client(args)`` opens the home's Client."""
    p = sub.add_parser("probe", help="try every way to the server and say what is blocked")
    p.add_argument("link", nargs="?", help="a server link or invite (default: our server)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_probe, open_client=open_client)

    p = sub.add_parser("status", help="connect to our server and show the route in use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_status, open_client=open_client)
