"""An active prober's view of a host: what comes back, how the connection ends, how fast.

A censor that suspects a relay sends probes and compares the answers with those of an
ordinary web server. :func:`observe` records, per probe, everything such a prober can
see on the wire and reduces it to what is stable between two runs of the same server
(no Date header, no random handshake values): that reduced :class:`Answer` must be the
same for the relay and for the same web server without a relay behind it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from dataclasses import dataclass

__all__ = ["Answer", "observe", "first_record", "tls_shape"]

#: Seconds a probe waits for the server to answer and close.
WINDOW = 2.0
#: A TLS record's length may vary by this much between two handshakes of one server:
#: ECDSA signatures are DER-encoded (70 to 72 bytes), so CertificateVerify varies.
SLACK = 4


@dataclass(frozen=True)
class Answer:
    #: The reply, reduced (see :func:`tls_shape` and :func:`_http`).
    reply: str
    #: Raw TLS replies: the length of each record (compared within ``SLACK``).
    lengths: tuple[int, ...]
    #: How the connection ended within the window: "eof", "reset" or "open".
    close: str
    #: Coarse timing: "fast" (< 1 s), "slow" (within the window) or "never".
    timing: str
    #: TLS probes: certificate digest, version, cipher and ALPN the server chose.
    tls: str = ""

    def same_as(self, other: Answer) -> bool:
        """Equal, but for record lengths that may differ by ``SLACK`` bytes each."""
        return (
            (self.reply, self.close, self.timing, self.tls)
            == (other.reply, other.close, other.timing, other.tls)
            and len(self.lengths) == len(other.lengths)
            and all(abs(a - b) <= SLACK for a, b in zip(self.lengths, other.lengths, strict=True))
        )


def first_record(stream: bytes) -> bytes:
    """The first TLS record of a recorded client stream (its ClientHello)."""
    length = int.from_bytes(stream[3:5], "big")
    return stream[: 5 + length]


def tls_shape(data: bytes) -> tuple[str, tuple[int, ...]]:
    """Record types (alerts in full) and record lengths of raw TLS bytes.

    Anything that does not parse as records is given as its length and digest.
    """
    out = []
    lengths = []
    rest = data
    while len(rest) >= 5 and rest[0] in (20, 21, 22, 23) and rest[1] == 3:
        length = int.from_bytes(rest[3:5], "big")
        body = rest[5 : 5 + length]
        out.append(f"{rest[0]}:{body.hex()}" if rest[0] == 21 else str(rest[0]))
        lengths.append(length)
        rest = rest[5 + length :]
    if rest:
        out.append(f"raw:{len(rest)}:{hashlib.sha256(rest).hexdigest()[:12]}")
    return " ".join(out), tuple(lengths)


def _http(data: bytes) -> str:
    """An HTTP reply without its Date header (the only line that changes per second)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    return (b"\r\n".join(lines) + sep + body).decode("latin-1")


def _timing(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return "fast" if seconds < 1.0 else "slow"


async def _read_all(reader: asyncio.StreamReader, started: float) -> tuple[bytes, str, str]:
    out = b""
    try:
        async with asyncio.timeout(WINDOW):
            while data := await reader.read(65536):
                out += data
    except TimeoutError:
        return out, "open", "never"
    except (ConnectionResetError, ssl.SSLError, OSError):
        return out, "reset", _timing(time.monotonic() - started)
    return out, "eof", _timing(time.monotonic() - started)


async def observe(host: str, port: int, payload: bytes, sni: str | None = None) -> Answer:
    """Send ``payload`` on raw TCP (``sni`` None), or after a TLS handshake naming
    ``sni`` ("" sends no server name); return what came back."""
    started = time.monotonic()
    if sni is None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            await writer.drain()
            data, close, timing = await _read_all(reader, started)
        finally:
            writer.transport.abort()
        return Answer(*tls_shape(data), close, timing)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=sni or None
    )
    try:
        tls = writer.get_extra_info("ssl_object")
        cert = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()[:16]
        summary = f"{cert} {tls.version()} {tls.cipher()[0]} {tls.selected_alpn_protocol()}"
        writer.write(payload)
        await writer.drain()
        data, close, timing = await _read_all(reader, started)
    finally:
        writer.transport.abort()
    return Answer(_http(data), (), close, timing, summary)
