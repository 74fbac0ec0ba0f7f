"""A thin typed wrapper over vodozemac's Megolm group sessions (DESIGN §3, protocol §10.3).

One sending device holds one outbound :class:`MegolmOutbound` per group and hands its
session key to each member device over Olm; receivers hold a :class:`MegolmInbound` per
(sender device, session). Megolm's ratchet only moves forward, so a key handed out at
index *n* cannot decrypt messages before *n*: a member added later reads nothing older.
"""

from __future__ import annotations

import vodozemac

from samizdat.crypto.olm import pickle_with, unpickle
from samizdat.errors import DecryptionError

__all__ = ["MegolmOutbound", "MegolmInbound"]


class MegolmOutbound:
    """The sending side of one Megolm session. Never shows its state."""

    __slots__ = ("_session",)

    def __init__(self, session: vodozemac.GroupSession) -> None:
        self._session = session

    @classmethod
    def create(cls) -> MegolmOutbound:
        return cls(vodozemac.GroupSession())

    @classmethod
    def from_pickle(cls, pickle: str, pickle_key: bytes) -> MegolmOutbound:
        return cls(
            unpickle(vodozemac.GroupSession.from_pickle, pickle, pickle_key, "Megolm session")
        )

    def pickle(self, pickle_key: bytes) -> str:
        return pickle_with(self._session, pickle_key)

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def message_index(self) -> int:
        return self._session.message_index

    def session_key(self) -> str:
        """The key at the current index (secret: send it over Olm only)."""
        return self._session.session_key.to_base64()

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._session.encrypt(plaintext).to_bytes()

    def __repr__(self) -> str:
        return "MegolmOutbound(<secret>)"


class MegolmInbound:
    """The receiving side of one Megolm session. Never shows its state."""

    __slots__ = ("_session",)

    def __init__(self, session: vodozemac.InboundGroupSession) -> None:
        self._session = session

    @classmethod
    def from_session_key(cls, session_key: str) -> MegolmInbound:
        """Raises DecryptionError if the key is malformed."""
        try:
            return cls(vodozemac.InboundGroupSession(vodozemac.SessionKey(session_key)))
        except ValueError as exc:
            raise DecryptionError("malformed Megolm session key") from exc

    @classmethod
    def from_pickle(cls, pickle: str, pickle_key: bytes) -> MegolmInbound:
        return cls(
            unpickle(
                vodozemac.InboundGroupSession.from_pickle, pickle, pickle_key, "Megolm session"
            )
        )

    def pickle(self, pickle_key: bytes) -> str:
        return pickle_with(self._session, pickle_key)

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def first_known_index(self) -> int:
        return self._session.first_known_index

    def decrypt(self, ciphertext: bytes) -> tuple[bytes, int]:
        """Returns ``(plaintext, message_index)``.

        Raises:
            DecryptionError: malformed, forged, or from before the index we hold.
        """
        try:
            message = vodozemac.MegolmMessage.from_bytes(ciphertext)
            decrypted = self._session.decrypt(message)
        except ValueError as exc:
            raise DecryptionError("Megolm message does not decrypt") from exc
        return decrypted.plaintext, decrypted.message_index

    def __repr__(self) -> str:
        return "MegolmInbound(<secret>)"
