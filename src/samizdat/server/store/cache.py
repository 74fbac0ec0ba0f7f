"""A memo of hot reads for a store that is the only writer of its database.

Every deposit asks "whose token is this?" and "which devices does that user have?".
On SQLite the server process is the only writer, so it can answer both from memory and
skip two hops to the reader thread per deposit. Any write that could change an answer
(tokens, device lists) bumps the generation and empties the memo, both before and after
it commits; a read that started under an older generation is not memoised, so a value
read before a write can never be stored after it.

PostgreSQL nodes use it too (``postgres.py``): there other nodes write, and each node
hears of their writes over the Redis bus and forgets just the key a write changed
(:meth:`ReadCache.discard`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Generic, TypeVar

__all__ = ["ReadCache", "Targets", "memoised_targets"]

_K = TypeVar("_K")
_V = TypeVar("_V")
_DEFAULT_MAX: Final = 100_000


class ReadCache(Generic[_K, _V]):
    def __init__(self, max_entries: int = _DEFAULT_MAX) -> None:
        self._max = max_entries
        self._data: dict[_K, _V] = {}
        self.generation = 0

    def __repr__(self) -> str:
        return f"ReadCache(entries={len(self._data)})"

    def get(self, key: _K) -> _V | None:
        return self._data.get(key)

    def put(self, key: _K, value: _V, generation: int) -> None:
        """Memoise ``value`` if no write happened since the read began at ``generation``."""
        if generation != self.generation:
            return
        if len(self._data) >= self._max:
            self._data.clear()  # crude but bounded; a miss costs one read
        self._data[key] = value

    def invalidate(self) -> None:
        self.generation += 1
        self._data.clear()

    def discard(self, key: _K) -> None:
        """Forget one answer; like :meth:`invalidate`, no read in flight is memoised."""
        self.generation += 1
        self._data.pop(key, None)


#: token hash -> (user key, that user's device ids): what a fan-out needs per target.
Targets = dict[bytes, tuple[bytes, frozenset[bytes]]]


def memoised_targets(
    token_hashes: Sequence[bytes],
    token_users: ReadCache[bytes, bytes],
    user_devices: ReadCache[bytes, frozenset[bytes]],
) -> tuple[Targets, list[bytes]]:
    """The fan-out targets both memos answer, and the token hashes left to read."""
    found: Targets = {}
    missing: list[bytes] = []
    for token_hash in token_hashes:
        user_key = token_users.get(token_hash)
        devices = None if user_key is None else user_devices.get(user_key)
        if user_key is not None and devices is not None:
            found[token_hash] = (user_key, devices)
        else:
            missing.append(token_hash)
    return found, missing
