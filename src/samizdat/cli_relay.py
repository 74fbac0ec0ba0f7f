"""``samizdat relay`` (run a relay, docs/relay.md) and ``samizdat relays`` (the relays this
client uses). The relay side needs no identity and no passphrase."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from samizdat.cli_common import out as _out
from samizdat.client import relays as client_relays
from samizdat.client.app import Client
from samizdat.errors import LocalError
from samizdat.transport.dial import now_ms

__all__ = ["add_commands"]


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise LocalError(f"{flag} must be HOST:PORT")
    return host.strip("[]"), int(port)


async def _stats(folder: Path) -> int:
    try:
        host, port = _host_port((folder / "metrics-address").read_text().strip(), "metrics")
    except OSError as exc:
        raise LocalError("no running relay with --metrics in this data dir") from exc
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise LocalError("the relay's metrics endpoint does not answer") from exc
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    _out(data.split(b"\r\n\r\n", 1)[-1].decode())
    return 0


async def _cmd_relay(args: argparse.Namespace) -> int:
    # Imported here: only the relay command needs the relay package.
    from samizdat.relay import Relay, RelayLimits, load_identity, parse_upstream
    from samizdat.relay.config import server_context_for
    from samizdat.relay.decoy import DEFAULT_PAGE
    from samizdat.relay.server import small_tls_buffers

    folder = Path(args.data_dir)
    if args.stats:
        return await _stats(folder)
    host, port = _host_port(args.listen, "--listen")
    public = args.public or [f"{host}:{port}"]
    names = [args.sni or _host_port(public[0], "--public")[0]]
    if bool(args.cert) != bool(args.key):
        raise LocalError("--cert and --key go together")
    identity = load_identity(
        folder, names, Path(args.cert) if args.cert else None, Path(args.key) if args.key else None
    )
    if args.revoke:
        if not identity.revoke(args.revoke):
            raise LocalError("no such link id")
        _out(f"revoked {args.revoke}")
        return 0
    upstreams = {u.server_key: u for u in (parse_upstream(t, now_ms()) for t in args.upstream)}
    servers = list(upstreams)

    def link_text(link_id: bytes) -> str:
        return identity.link(link_id, public, args.sni or "", servers, args.path)

    if args.new_link or not any(identity.links.values()):
        link_id = identity.new_link_id()
        if args.new_link:
            _out(link_text(link_id))
            return 0
    active = [bytes.fromhex(i) for i, ok in identity.links.items() if ok]
    (folder / "relay-link").write_text(link_text(active[-1]) + "\n")
    if args.links:
        for link_id in active:
            _out(f"{link_id.hex()}\t{link_text(link_id)}")
        return 0
    if not upstreams:
        raise LocalError("give at least one --upstream server link to forward to")
    limits = RelayLimits(
        max_connections=args.max_connections,
        address_rate=args.address_rate,
        address_burst=max(1.0, args.address_rate * 4),
        bandwidth=args.bandwidth,
        idle_timeout=args.idle_timeout,
    )
    small_tls_buffers()
    decoy = Path(args.decoy).read_bytes() if args.decoy else DEFAULT_PAGE  # noqa: ASYNC240
    relay = Relay(
        identity,
        server_context_for(identity),
        upstreams,
        limits,
        decoy,
        Path(args.record) if args.record else None,
    )
    try:
        bound = await relay.listen(host, port)
        if args.metrics:
            m_host, m_port = _host_port(args.metrics, "--metrics")
            m_bound = await relay.listen_metrics(m_host, m_port)
            (folder / "metrics-address").write_text(f"{m_host}:{m_bound}\n")
        _out(f"relay listening on {host}:{bound}, forwarding to {len(upstreams)} server(s)")
        _out(
            f"relay link (give it to people who need it; revoke with --revoke {active[-1].hex()}):"
        )
        text = link_text(active[-1])
        _out(text)
        if not args.no_qr:
            import segno

            segno.make(text, error="L").terminal(compact=True)
        (folder / "relay-ready").write_text(f"{bound}\n")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await relay.close()
    return 0


async def _cmd_relays(args: argparse.Namespace) -> int:
    async with await args.open_client(args) as client:
        if args.action == "add":
            relay = client_relays.add(client, args.arg)
            _out(f"added relay {relay.link_id.hex()} ({len(relay.addresses)} address(es))")
        elif args.action == "remove":
            relay = client_relays.remove(client, args.arg)
            _out(f"removed relay {relay.link_id.hex()}")
        else:
            rows = [
                {"id": r.link_id.hex(), "addresses": r.addresses, "sni": r.sni}
                for r in client_relays.listing(client)
            ]
            if args.json:
                _out(json.dumps(rows))
            for row in [] if args.json else rows:
                _out(f"{row['id']}\t{', '.join(row['addresses'])}")
    return 0


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    open_client: Callable[[argparse.Namespace], Awaitable[Client]],
) -> None:
    """``relay`` (run one) and ``relays add|list|remove`` (use them)."""
    p = sub.add_parser("relay", help="run a blind relay for people behind a block")
    p.add_argument("--data-dir", required=True, help="master key, certificate, issued links")
    p.add_argument("--listen", default="127.0.0.1:8444", help="HOST:PORT (443 in production)")
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="LINK[=HOST:PORT]",
        help="a server link to forward to (repeatable); =HOST:PORT: reach it there instead",
    )
    p.add_argument(
        "--public", action="append", default=[], metavar="HOST:PORT",
        help="address clients use (repeatable; default: --listen)",
    )  # fmt: skip
    p.add_argument("--sni", default="", help="the relay's domain name (with --cert/--key)")
    p.add_argument("--cert", default=None, help="certificate chain PEM (default: self-signed)")
    p.add_argument("--key", default=None, help="its private key PEM")
    p.add_argument("--path", default="/", help="request path of the handshake (default /)")
    p.add_argument("--decoy", default=None, metavar="FILE", help="static page shown to others")
    p.add_argument("--max-connections", type=int, default=512)
    p.add_argument("--address-rate", type=float, default=5.0, help="new connections/s per IP")
    p.add_argument("--bandwidth", type=int, default=0, help="bytes/s per connection (0: no cap)")
    p.add_argument("--idle-timeout", type=float, default=300.0, metavar="S")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT", help="counters (loopback!)")
    p.add_argument("--stats", action="store_true", help="print a running relay's counters")
    p.add_argument("--new-link", action="store_true", help="issue another link and exit")
    p.add_argument("--revoke", default=None, metavar="LINK_ID", help="revoke one link and exit")
    p.add_argument("--links", action="store_true", help="print the active links and exit")
    p.add_argument("--no-qr", action="store_true")
    p.add_argument(
        "--record", default=None, metavar="FILE", help="append every forwarded byte (tests)"
    )
    p.set_defaults(handler=_cmd_relay)

    p = sub.add_parser("relays", help="relays this client may use: add LINK, list, remove ID")
    p.add_argument("action", choices=["add", "list", "remove"])
    p.add_argument("arg", nargs="?", default="", help="the link (add) or link id (remove)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_cmd_relays, open_client=open_client)
