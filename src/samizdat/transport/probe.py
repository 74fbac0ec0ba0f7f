"""``samizdat probe``: try every candidate, stage by stage, and say what is blocked (DESIGN §6).

Unlike :func:`dial`, which stops at the first path that works, a probe runs every
candidate to its end (in parallel, each with its own timeouts), asks the system
resolver and DNS-over-HTTPS about every name separately, and then turns what it saw
into named blocks and one plain sentence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field

from samizdat.errors import ConnectError, ProtocolError, StageFailed
from samizdat.protocol.descriptor import Descriptor, SignedDescriptor, open_descriptor
from samizdat.transport.dial import (
    Attempt,
    Candidate,
    TransportOptions,
    attempt,
    candidates,
    now_ms,
)
from samizdat.transport.resolve import is_ip, resolve_doh, resolve_system
from samizdat.transport.tls import server_context

__all__ = ["Lookup", "ProbeReport", "probe"]


@dataclass
class Lookup:
    """What one resolver said about one name."""

    host: str
    resolver: str
    ok: bool
    ms: float
    addresses: list[str] = field(default_factory=list)
    failure: str = ""


@dataclass
class ProbeReport:
    lookups: list[Lookup]
    attempts: list[Attempt]
    #: Machine-readable names of what is blocked: ``dns_nxdomain``, ``dns_poisoned``,
    #: ``blackhole``, ``sni_reset``, ``tls_interception``, ``websocket_blocked``,
    #: ``direct_blocked``, ``doh_blocked``.
    blocks: list[str]
    sentence: str
    ok: bool

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "blocks": self.blocks,
            "sentence": self.sentence,
            "lookups": [vars(lookup) for lookup in self.lookups],
            "candidates": [
                {
                    "transport": a.candidate.transport,
                    "endpoint": a.candidate.url,
                    "resolver": a.candidate.resolver,
                    "route": a.candidate.route.label,
                    "address": a.address,
                    "ok": a.ok,
                    "ms": a.ms,
                    "failure": a.failure,
                    "stages": [vars(stage) for stage in a.stages],
                }
                for a in self.attempts
            ],
        }


async def _lookup(host: str, resolver: str, options: TransportOptions) -> Lookup:
    start = time.monotonic()
    try:
        if resolver == "system":
            addresses = await resolve_system(host, options.dns_server, options.stage_timeout)
        else:
            addresses = []
            failure: StageFailed | None = None
            for url in options.doh:
                try:
                    addresses = await resolve_doh(
                        host,
                        url,
                        dns_server=options.dns_server,
                        verify=options.doh_verify,
                        seconds=options.stage_timeout,
                    )
                    break
                except StageFailed as exc:
                    failure = exc
            if not addresses:
                raise failure or StageFailed("doh", "none")
    except StageFailed as exc:
        ms = round((time.monotonic() - start) * 1000, 1)
        return Lookup(host, resolver, False, ms, failure=exc.kind)
    return Lookup(host, resolver, True, round((time.monotonic() - start) * 1000, 1), addresses)


async def probe(
    signed: SignedDescriptor, server_key: bytes, options: TransportOptions
) -> ProbeReport:
    """Try every way to the server and explain what is blocked.

    Raises:
        ConnectError: the descriptor does not verify (nothing was tried).
    """
    try:
        descriptor = open_descriptor(signed, now_ms(), expected_key=server_key)
    except ProtocolError as exc:
        raise ConnectError(f"the server descriptor does not verify: {exc.message}") from exc
    todo = candidates(descriptor, options)
    if options.proxy is not None:
        # Also the direct paths, to tell the user whether the proxy is needed at all.
        todo += candidates(descriptor, dataclasses.replace(options, proxy=None))
    hosts = sorted({c.host for c in todo if not is_ip(c.host) and c.route.kind == "direct"})
    lookups = await asyncio.gather(
        *(_lookup(h, "system", options) for h in hosts),
        *(_lookup(h, "doh", options) for h in hosts if options.doh),
    )
    attempts = [Attempt(c) for c in todo]
    context = server_context(descriptor)

    async def run(record: Attempt) -> None:
        try:
            channel, _, _ = await attempt(
                record.candidate, descriptor, server_key, options, record, context=context
            )
        except StageFailed:
            return
        except (ConnectError, OSError) as exc:  # not a stage we know: report, go on
            record.failure = f"error:{type(exc).__name__}"
            return
        await channel.close()

    await asyncio.gather(*(run(a) for a in attempts))
    blocks, sentence = explain(descriptor, list(lookups), attempts)
    return ProbeReport(list(lookups), attempts, blocks, sentence, any(a.ok for a in attempts))


def _where(c: Candidate, address: str) -> str:
    if c.resolver == "literal":
        return f"the IP address {c.host}"
    if c.resolver == "proxy":
        return c.host
    return f"{c.host} ({address})"


def explain(
    descriptor: Descriptor, lookups: list[Lookup], attempts: list[Attempt]
) -> tuple[list[str], str]:
    """Named blocks and one sentence: what is blocked, and the way around it."""
    blocks: list[str] = []
    reasons: list[str] = []
    system = {lk.host: lk for lk in lookups if lk.resolver == "system"}
    doh = {lk.host: lk for lk in lookups if lk.resolver == "doh"}
    direct = [a for a in attempts if a.candidate.route.kind == "direct"]

    def add(block: str, reason: str) -> None:
        if block not in blocks:
            blocks.append(block)
            reasons.append(reason)

    for host, lk in system.items():
        other = doh.get(host)
        if not lk.ok and lk.failure == "nxdomain":
            if other is not None and other.ok:
                add(
                    "dns_nxdomain",
                    f"{host} does not resolve here (NXDOMAIN), but DNS-over-HTTPS gives "
                    f"{other.addresses[0]}",
                )
            else:
                add("dns_nxdomain", f"{host} does not resolve here (NXDOMAIN)")
        elif lk.ok and other is not None and other.ok:
            if not set(lk.addresses) & set(other.addresses):
                add(
                    "dns_poisoned",
                    f"{host} resolves here to {lk.addresses[0]} but DNS-over-HTTPS says "
                    f"{other.addresses[0]} (DNS poisoning)",
                )
        if other is not None and not other.ok and other.failure not in ("nxdomain", "none"):
            add("doh_blocked", "DNS-over-HTTPS does not answer")
    for a in direct:
        c = a.candidate
        kind = a.failure
        if kind.startswith("pin:"):
            add(
                "tls_interception",
                f"{_where(c, a.address)} answers with another TLS certificate "
                "(interception or a wrong address)",
            )
        elif kind in ("tcp:timeout", "tls:timeout", "hello:timeout"):
            add("blackhole", f"{_where(c, a.address)} does not answer (blackholed)")
        elif kind in ("tls:reset", "tls:closed") and c.resolver != "literal":
            names_ok = any(
                b.ok and b.address == a.address and b.candidate.resolver == "literal"
                for b in direct
            )
            if names_ok or any(b.ok for b in direct):
                add(
                    "sni_reset",
                    f"TLS connections naming {c.host} are reset (SNI filtering)",
                )
        elif kind in ("tls:reset", "tls:closed", "tcp:reset", "tcp:refused"):
            add("blackhole", f"{_where(c, a.address)} refuses or resets connections")
    ws_failed = [a for a in direct if a.candidate.transport == "wss" and a.failure]
    poll_ok = [a for a in attempts if a.candidate.transport == "poll" and a.ok]
    if (
        ws_failed
        and poll_ok
        and any(a.failure.startswith("upgrade:") for a in ws_failed)
        and not any(a.ok for a in attempts if a.candidate.transport == "wss")
    ):
        add("websocket_blocked", "WebSocket upgrades are refused or cut on the way")
    proxied_ok = [a for a in attempts if a.ok and a.candidate.route.kind != "direct"]
    if direct and not any(a.ok for a in direct) and proxied_ok:
        add("direct_blocked", "no direct route to the server works")
    # Prefer what a real dial would pick: the candidate order, proxied first if set.
    winners = [a for a in attempts if a.ok]
    winners.sort(key=lambda a: a.candidate.route.kind == "direct")
    if winners:
        best = winners[0]
        c = best.candidate
        how = {"wss": "WebSocket", "poll": "HTTPS long-polling"}[c.transport]
        route = "" if c.route.kind == "direct" else f" through the {c.route.label}"
        way = f"connected over {how} to {_where(c, best.address)}{route} in {best.ms:.0f} ms"
        if not reasons:
            return blocks, f"Nothing is blocked: {way}."
        return blocks, f"{'; '.join(reasons)}: {way}."
    if not reasons:
        reasons = [f"{a.candidate.label}: {a.failure}" for a in attempts[:3]]
    hint = "try --proxy with a SOCKS5 or HTTP proxy (Tor, a VPN), or --doh with a DoH service"
    return blocks, f"Cannot reach the server: {'; '.join(reasons)}. {hint}."
