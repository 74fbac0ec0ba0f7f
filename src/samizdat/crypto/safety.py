"""Safety numbers: a fingerprint of two users' keys that both sides compute alike.

Built as Signal's numeric fingerprint: for each side, SHA-512 iterated 5200 times over
``version || key || stable id``; 30 digits from each side's first 30 bytes (six 5-byte
chunks, each mod 100000); the two halves sorted so both users see the same 60 digits.
"""

from __future__ import annotations

import hashlib

__all__ = ["safety_number", "format_safety_number"]

_VERSION = b"\x00\x00"
_ITERATIONS = 5200


def _half(user_key: bytes) -> str:
    digest = _VERSION + user_key + user_key
    for _ in range(_ITERATIONS):
        digest = hashlib.sha512(digest + user_key).digest()
    chunks = (int.from_bytes(digest[i : i + 5], "big") % 100_000 for i in range(0, 30, 5))
    return "".join(f"{c:05d}" for c in chunks)


def safety_number(user_key_a: bytes, user_key_b: bytes) -> str:
    """Sixty decimal digits, identical whichever side computes them."""
    halves = sorted((_half(user_key_a), _half(user_key_b)))
    return halves[0] + halves[1]


def format_safety_number(number: str) -> str:
    """Twelve groups of five digits, four per line."""
    groups = [number[i : i + 5] for i in range(0, len(number), 5)]
    return "\n".join(" ".join(groups[i : i + 4]) for i in range(0, len(groups), 4))
