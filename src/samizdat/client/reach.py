"""What the client remembers about reaching servers: newest descriptors and working routes.

Both live in the encrypted local store, keyed by server key: ``descriptor`` holds the
newest verified signed descriptor of our own server and of every contact's server (a
server pushes newer ones, so we learn new endpoints before old ones are blocked);
``route`` holds the key of the candidate that last completed a hello, tried first next
time. Also the backoff between reconnections and what ``probe``/``status`` need.

When a server rotates its key (protocol §4), the descriptor signed by the new key is
stored under the new key and ``server-alias`` maps the old key to it, so records that
still name the old key (contacts, our own identity) resolve to the newest descriptor.
"""

from __future__ import annotations

import random

import msgspec

from samizdat.client.store import Store
from samizdat.errors import ProtocolError
from samizdat.protocol.descriptor import Descriptor, SignedDescriptor, open_descriptor
from samizdat.protocol.links import decode_invite, decode_server_link
from samizdat.transport.dial import now_ms

__all__ = [
    "current_key",
    "newest_descriptor",
    "save_descriptor",
    "preferred_route",
    "save_route",
    "backoff",
    "descriptor_from_link",
]

_DESCRIPTOR = "descriptor"
_ROUTE = "route"
_ALIAS = "server-alias"
#: Aliases followed at most; rotations are rare and a loop must not hang us.
_MAX_ALIASES = 16
_signed_decoder = msgspec.msgpack.Decoder(SignedDescriptor)
_encoder = msgspec.msgpack.Encoder()


def _verified(signed: SignedDescriptor, server_key: bytes) -> Descriptor | None:
    try:
        return open_descriptor(signed, now_ms(), expected_key=server_key)
    except ProtocolError:
        return None


def current_key(store: Store, server_key: bytes) -> bytes:
    """The key the server once known as ``server_key`` uses now (after rotations)."""
    key = server_key
    for _ in range(_MAX_ALIASES):
        raw = store.get(_ALIAS, key)
        if raw is None or raw == server_key:
            break
        key = raw
    return key


def newest_descriptor(
    store: Store, server_key: bytes, signed: SignedDescriptor
) -> SignedDescriptor:
    """The newer valid one of ``signed`` and the one stored for ``server_key`` (or for
    the key it was rotated to)."""
    key = current_key(store, server_key)
    raw = store.get(_DESCRIPTOR, key)
    if raw is None:
        return signed
    stored = _signed_decoder.decode(raw)
    mine, theirs = _verified(stored, key), _verified(signed, server_key)
    if mine is None:
        return signed
    if theirs is None or mine.seq > theirs.seq:
        return stored
    return signed


def save_descriptor(store: Store, server_key: bytes, signed: SignedDescriptor) -> bool:
    """Keep ``signed`` if it verifies for ``server_key`` and is newer than what we hold.

    A descriptor that rotates the key (a valid chain from ``server_key``, or from the key
    we already followed it to) is kept under its new key, and ``server_key`` becomes an
    alias of it. Returns whether it was stored. One signed by another key without such a
    chain, older or expired is not.
    """
    current = current_key(store, server_key)
    fresh = _verified(signed, current)
    if fresh is None and current != server_key:
        fresh = _verified(signed, server_key)
    if fresh is None:
        return False
    key = fresh.server_key
    if key == server_key != current:
        # Still signed by a key we followed away from (a node that has not rotated yet):
        # never roll the alias back.
        return False
    with store.locked():
        for old in {server_key, current} - {key}:
            store.put(_ALIAS, old, key)
        raw = store.get(_DESCRIPTOR, key)
        if raw is not None:
            held = _verified(_signed_decoder.decode(raw), key)
            if held is not None and held.seq >= fresh.seq:
                return False
        store.put(_DESCRIPTOR, key, _encoder.encode(signed))
    return True


def preferred_route(store: Store, server_key: bytes) -> str | None:
    raw = store.get(_ROUTE, server_key)
    return None if raw is None else raw.decode()


def save_route(store: Store, server_key: bytes, key: str) -> None:
    if preferred_route(store, server_key) != key:
        store.put(_ROUTE, server_key, key.encode())


def backoff(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnection number ``failures`` (1, 2, ...): exponential,
    capped at 15 s, with +-50% jitter so that clients cut off together do not return
    together."""
    base = min(15.0, 0.25 * 2.0 ** min(failures - 1, 16))
    jitter = rng.uniform(0.5, 1.5) if rng is not None else random.uniform(0.5, 1.5)
    return base * jitter


def descriptor_from_link(link: str) -> SignedDescriptor:
    """The server descriptor in a ``samizdat:`` server link or invite (unverified).

    Raises:
        ProtocolError: neither kind of link.
    """
    try:
        return decode_server_link(link).descriptor
    except ProtocolError:
        return decode_invite(link).card.server
