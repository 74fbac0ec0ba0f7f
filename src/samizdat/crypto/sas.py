"""Short authentication strings with vodozemac's SAS (DESIGN §3, protocol §10.4).

Two devices exchange Curve25519 public keys over any channel, derive the same bytes from
the shared secret and an ``info`` string that names both parties, and show them to their
users as three 4-digit numbers or seven emoji. A man in the middle gets different bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import vodozemac

from samizdat.errors import DecryptionError

__all__ = ["EMOJI", "SasCode", "Sas", "EstablishedSas"]

#: The 64 emoji of the Matrix SAS table, by index (names for terminals without emoji).
EMOJI: tuple[str, ...] = (
    "dog", "cat", "lion", "horse", "unicorn", "pig", "elephant", "rabbit",
    "panda", "rooster", "penguin", "turtle", "fish", "octopus", "butterfly", "flower",
    "tree", "cactus", "mushroom", "globe", "moon", "cloud", "fire", "banana",
    "apple", "strawberry", "corn", "pizza", "cake", "heart", "smiley", "robot",
    "hat", "glasses", "spanner", "santa", "thumbs up", "umbrella", "hourglass", "clock",
    "gift", "light bulb", "book", "pencil", "paperclip", "scissors", "lock", "key",
    "hammer", "telephone", "flag", "train", "bicycle", "aeroplane", "rocket", "trophy",
    "ball", "guitar", "trumpet", "bell", "anchor", "headphones", "folder", "pin",
)  # fmt: skip


@dataclass(frozen=True)
class SasCode:
    decimals: tuple[int, int, int]
    emoji: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join(f"{d:04d}" for d in self.decimals)


class EstablishedSas:
    __slots__ = ("_sas",)

    def __init__(self, sas: vodozemac.EstablishedSas) -> None:
        self._sas = sas

    def code(self, info: str) -> SasCode:
        raw = self._sas.bytes(info)
        decimals = raw.decimals
        return SasCode(
            decimals=(decimals[0], decimals[1], decimals[2]),
            emoji=tuple(EMOJI[i % 64] for i in raw.emoji_indices),
        )

    def mac(self, message: str, info: str) -> str:
        return self._sas.calculate_mac(message, info)

    def verify_mac(self, message: str, info: str, tag: str) -> None:
        """Raises DecryptionError if the tag does not match."""
        try:
            self._sas.verify_mac(message, info, tag)
        except ValueError as exc:
            raise DecryptionError("SAS MAC does not match") from exc

    def __repr__(self) -> str:
        return "EstablishedSas(<secret>)"


class Sas:
    """One side of a SAS exchange; lives in memory only (vodozemac cannot pickle it)."""

    __slots__ = ("_sas",)

    def __init__(self) -> None:
        self._sas = vodozemac.Sas()

    @property
    def public_key(self) -> bytes:
        return self._sas.public_key.to_bytes()

    def establish(self, their_key: bytes) -> EstablishedSas:
        """Raises DecryptionError for a malformed key."""
        try:
            return EstablishedSas(
                self._sas.diffie_hellman(vodozemac.Curve25519PublicKey.from_bytes(their_key))
            )
        except ValueError as exc:
            raise DecryptionError("malformed SAS key") from exc

    def __repr__(self) -> str:
        return "Sas(<secret>)"
