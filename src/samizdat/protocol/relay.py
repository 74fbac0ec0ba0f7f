"""The relay handshake and relay links, without I/O (docs/protocol.md §11).

Theory of operation. A relay is an HTTPS server with its own certificate. Inside that
TLS, the client's first bytes are an ordinary-looking HTTP/1.1 request whose
``Authorization: Bearer`` value is a *proof*::

    proof = link_id (8) || issued_ms (8, big-endian) || nonce (16) || server_key (32) || mac (32)
    mac   = HMAC-SHA256(link_secret, PROOF_CONTEXT || link_id || issued_ms || nonce || server_key)
    link_secret = HMAC-SHA256(master_key, LINK_CONTEXT || link_id)

The relay answers a valid, fresh, never-seen proof naming a configured upstream with
``101 Switching Protocols`` and from then on splices bytes; the client runs its pinned TLS
to the server inside. Anything else is served as a web site would serve it. A recorded
connection cannot be replayed: TLS itself refuses replayed records, and a proof whose
plaintext leaked is refused by the time window and the nonce cache (:class:`ReplayCache`).
Secrets are per link, derived from the relay's master key, so one link can be revoked
without touching the others.

The clock and the nonce are arguments, as everywhere in ``protocol/``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections import OrderedDict
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol.types import Key32

__all__ = [
    "LINK_CONTEXT",
    "PROOF_CONTEXT",
    "PROOF_LEN",
    "WINDOW_MS",
    "MAX_HEAD",
    "RelayLink",
    "Proof",
    "RequestHead",
    "link_secret",
    "make_proof",
    "encode_proof",
    "decode_proof",
    "check_proof",
    "ReplayCache",
    "parse_request_head",
    "proof_request",
    "find_proof",
]

LINK_CONTEXT: Final = b"samizdat/relay/link/v1"
PROOF_CONTEXT: Final = b"samizdat/relay/proof/v1"
PROOF_LEN: Final = 8 + 8 + 16 + 32 + 32
#: A proof is accepted this long either side of the relay's clock.
WINDOW_MS: Final = 60_000
#: Largest request head (request line and headers) a relay reads.
MAX_HEAD: Final = 8192
_MAX_HEADERS: Final = 64

Bytes8 = Annotated[bytes, Meta(min_length=8, max_length=8)]
Bytes32 = Annotated[bytes, Meta(min_length=32, max_length=32)]


class RelayLink(msgspec.Struct, frozen=True):
    """What a client needs to use one relay (a ``samizdat:relay/...`` link, §11.3)."""

    version: Annotated[int, Meta(ge=1)]
    #: ``host:port`` (IPv6 in brackets), tried in order.
    addresses: Annotated[
        list[Annotated[str, Meta(max_length=300)]], Meta(min_length=1, max_length=8)
    ]
    #: DER of the certificate the relay's TLS is anchored on; empty: the system's CAs
    #: (a relay with a real certificate for ``sni``).
    tls_ca: Annotated[bytes, Meta(max_length=4096)]
    #: SHA-256 of the relay's TLS SubjectPublicKeyInfo; empty: not pinned.
    tls_pin: Annotated[bytes, Meta(max_length=32)]
    #: Server name to send (and check, with system CAs); empty: none.
    sni: Annotated[str, Meta(max_length=253)]
    link_id: Bytes8
    secret: Bytes32
    #: Server keys this relay forwards to; empty: ask the relay (it refuses others).
    servers: Annotated[list[Key32], Meta(max_length=16)] = []
    #: The request path of the handshake (a path the decoy site could have).
    path: Annotated[str, Meta(max_length=200)] = "/"

    def __repr__(self) -> str:
        return f"RelayLink(link_id={self.link_id.hex()}, addresses={len(self.addresses)})"


class Proof(msgspec.Struct, frozen=True):
    link_id: bytes
    issued_ms: int
    nonce: bytes
    server_key: bytes
    mac: bytes

    def __repr__(self) -> str:
        return f"Proof(link_id={self.link_id.hex()}, issued_ms={self.issued_ms})"


class RequestHead(msgspec.Struct, frozen=True):
    method: str
    target: str
    version: str
    #: Names lower-cased, in order.
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def link_secret(master_key: bytes, link_id: bytes) -> bytes:
    """The secret of one link, derived from the relay's master key (§11.1)."""
    return hmac.new(master_key, LINK_CONTEXT + link_id, hashlib.sha256).digest()


def _mac(secret: bytes, link_id: bytes, issued_ms: int, nonce: bytes, server_key: bytes) -> bytes:
    body = PROOF_CONTEXT + link_id + issued_ms.to_bytes(8, "big") + nonce + server_key
    return hmac.new(secret, body, hashlib.sha256).digest()


def make_proof(link: RelayLink, server_key: bytes, now_ms: int, nonce: bytes) -> Proof:
    """A proof for one connection. ``nonce`` must be 16 fresh random bytes."""
    if len(nonce) != 16 or len(server_key) != 32:
        raise ValueError("nonce must be 16 bytes and server_key 32")
    mac = _mac(link.secret, link.link_id, now_ms, nonce, server_key)
    return Proof(link.link_id, now_ms, nonce, server_key, mac)


def encode_proof(proof: Proof) -> str:
    raw = proof.link_id + proof.issued_ms.to_bytes(8, "big") + proof.nonce
    raw += proof.server_key + proof.mac
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_proof(text: str) -> Proof:
    """Parse a proof (not yet checked).

    Raises:
        ProtocolError: not a well-formed proof.
    """
    if len(text) != 128 or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ProtocolError(ErrorCode.BAD_FRAME, "not a relay proof")
    try:
        raw = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - alphabet checked
        raise ProtocolError(ErrorCode.BAD_FRAME, "not a relay proof") from exc
    if len(raw) != PROOF_LEN:  # pragma: no cover - length checked
        raise ProtocolError(ErrorCode.BAD_FRAME, "not a relay proof")
    return Proof(raw[:8], int.from_bytes(raw[8:16], "big"), raw[16:32], raw[32:64], raw[64:])


def check_proof(proof: Proof, secret: bytes, now_ms: int, window_ms: int = WINDOW_MS) -> bool:
    """Whether ``proof`` is authentic for ``secret`` and inside the time window.

    Freshness against replays inside the window is :class:`ReplayCache`'s job.
    """
    if abs(now_ms - proof.issued_ms) > window_ms:
        return False
    want = _mac(secret, proof.link_id, proof.issued_ms, proof.nonce, proof.server_key)
    return hmac.compare_digest(want, proof.mac)


class ReplayCache:
    """Nonces seen in the last two windows; a nonce seen twice is a replay.

    Bounded: when full, new proofs are refused (fail closed) until old ones expire.
    """

    def __init__(self, window_ms: int = WINDOW_MS, max_entries: int = 100_000) -> None:
        self._window = window_ms
        self._max = max_entries
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def fresh(self, nonce: bytes, now_ms: int) -> bool:
        """Record ``nonce``; False if it was seen before or the cache is full."""
        # Expiries are appended in (nearly) increasing order: purge from the front.
        while self._seen:
            first, expiry = next(iter(self._seen.items()))
            if expiry > now_ms:
                break
            del self._seen[first]
        if nonce in self._seen or len(self._seen) >= self._max:
            return False
        # A proof is valid until issued + window; keep its nonce at least that long.
        self._seen[nonce] = now_ms + 2 * self._window
        return True


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VALUE = re.compile(rb"[\x20-\x7e\x80-\xff\t]*")


def parse_request_head(data: bytes) -> RequestHead:
    """Parse an HTTP/1.x request head: everything up to and including the empty line.

    Strict (RFC 9112 §3, §5): no obsolete line folding, no bare LF, tokens as the RFC
    says. A relay serves anything that does not parse as a plain ``400``.

    Raises:
        ProtocolError: not a request head we accept.
    """
    if len(data) > MAX_HEAD or not data.endswith(b"\r\n\r\n"):
        raise ProtocolError(ErrorCode.BAD_FRAME, "incomplete or oversized request head")
    lines = data[:-4].split(b"\r\n")
    if len(lines) - 1 > _MAX_HEADERS:
        raise ProtocolError(ErrorCode.BAD_FRAME, "too many headers")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ProtocolError(ErrorCode.BAD_FRAME, "bad request line")
    method, target, version = parts
    if (
        not _TOKEN.fullmatch(method)
        or not _TARGET.fullmatch(target)
        or version not in (b"HTTP/1.1", b"HTTP/1.0")
    ):
        raise ProtocolError(ErrorCode.BAD_FRAME, "bad request line")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise ProtocolError(ErrorCode.BAD_FRAME, "bad header line")
        headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    return RequestHead(method.decode(), target.decode(), version.decode(), tuple(headers))


def proof_request(link: RelayLink, proof: Proof, host: str) -> bytes:
    """The handshake request a client sends right after the relay's TLS (§11.2)."""
    return (
        f"GET {link.path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
        "Accept: */*\r\n"
        "Connection: Upgrade\r\n"
        "Upgrade: websocket\r\n"
        f"Authorization: Bearer {encode_proof(proof)}\r\n"
        "\r\n"
    ).encode()


def find_proof(head: RequestHead) -> Proof | None:
    """The proof a request carries, or None: then it is an ordinary web request."""
    value = head.header("authorization")
    if head.method != "GET" or value is None or not value.startswith("Bearer "):
        return None
    try:
        return decode_proof(value[len("Bearer ") :])
    except ProtocolError:
        return None
