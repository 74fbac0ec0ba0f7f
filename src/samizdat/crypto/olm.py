"""A thin typed wrapper over vodozemac's Olm ``Account`` and ``Session`` (DESIGN §3).

vodozemac speaks unpadded base64; the wire speaks raw bytes (docs/protocol.md §2). This
module converts at the boundary so that callers only ever see raw 32-byte keys and raw
64-byte signatures, and turns vodozemac's exceptions into samizdat's error tree.

Signatures are always made over ``signed_message(context, message)`` so that an
Olm-account signature can be checked with :func:`samizdat.crypto.signing.verify`.
Building the protocol's signed structures (``DeviceKeys``, ``SignedKey``) is left to the
caller: crypto sits below protocol in the layer order.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import vodozemac

from samizdat.crypto.signing import signed_message
from samizdat.errors import DecryptionError, LocalError

T = TypeVar("T")


class _Picklable(Protocol):
    def pickle(self, pickle_key: bytes) -> str: ...


__all__ = [
    "unpickle",
    "pickle_with",
    "OLM_PRE_KEY",
    "OLM_NORMAL",
    "PICKLE_KEY_SIZE",
    "OneTimeKey",
    "OlmAccount",
    "OlmSession",
]

#: Olm message types as carried in ``Sealed.olm_type``.
OLM_PRE_KEY = 0
OLM_NORMAL = 1
#: vodozemac pickles are encrypted with a 32-byte key.
PICKLE_KEY_SIZE = 32


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - vodozemac output
        raise LocalError("vodozemac returned malformed base64") from exc


def _curve(key: bytes) -> vodozemac.Curve25519PublicKey:
    if len(key) != 32:
        raise DecryptionError("Curve25519 key must be 32 bytes")
    try:
        return vodozemac.Curve25519PublicKey.from_bytes(key)
    except (vodozemac.KeyException, ValueError) as exc:
        raise DecryptionError("malformed Curve25519 key") from exc


def _check_pickle_key(key: bytes) -> None:
    if len(key) != PICKLE_KEY_SIZE:
        raise LocalError("pickle key must be 32 bytes")


def unpickle(load: Callable[[str, bytes], T], pickle: str, pickle_key: bytes, what: str) -> T:
    """``load(pickle, pickle_key)`` for any vodozemac object, with our errors.

    Raises:
        LocalError: the key is not 32 bytes. DecryptionError: wrong key or damaged pickle.
    """
    _check_pickle_key(pickle_key)
    try:
        return load(pickle, pickle_key)
    except ValueError as exc:
        raise DecryptionError(f"cannot unpickle {what}") from exc


def pickle_with(obj: _Picklable, pickle_key: bytes) -> str:
    """``obj.pickle(pickle_key)`` after checking the key size."""
    _check_pickle_key(pickle_key)
    return obj.pickle(pickle_key)


@dataclass(frozen=True)
class OneTimeKey:
    """An unpublished Curve25519 key to be signed and uploaded (not secret)."""

    key_id: str
    key: bytes
    fallback: bool


class OlmSession:
    """One Olm double-ratchet session with one remote device. Never shows its state."""

    __slots__ = ("_session",)

    def __init__(self, session: vodozemac.Session) -> None:
        self._session = session

    @classmethod
    def from_pickle(cls, pickle: str, pickle_key: bytes) -> OlmSession:
        """Raises DecryptionError if the pickle or the key is wrong."""
        return cls(unpickle(vodozemac.Session.from_pickle, pickle, pickle_key, "Olm session"))

    def pickle(self, pickle_key: bytes) -> str:
        return pickle_with(self._session, pickle_key)

    @property
    def session_id(self) -> str:
        return self._session.session_id

    def encrypt(self, plaintext: bytes) -> tuple[int, bytes]:
        """Returns ``(olm_type, ciphertext)``; type 0 until the other side has answered."""
        message_type, ciphertext = self._session.encrypt(plaintext).to_parts()
        return message_type, ciphertext

    def matches(self, olm_type: int, ciphertext: bytes) -> bool:
        """Whether a pre-key message belongs to this session (always False for type 1)."""
        if olm_type != OLM_PRE_KEY:
            return False
        try:
            pre_key = vodozemac.AnyOlmMessage.from_parts(olm_type, ciphertext).to_pre_key()
        except ValueError:
            return False
        return pre_key is not None and self._session.session_matches(pre_key)

    def decrypt(self, olm_type: int, ciphertext: bytes) -> bytes:
        """Decrypt one message and advance the ratchet.

        Raises:
            DecryptionError: malformed, forged, replayed, or for another session.
        """
        try:
            message = vodozemac.AnyOlmMessage.from_parts(olm_type, ciphertext)
            return self._session.decrypt(message)
        except ValueError as exc:
            raise DecryptionError("Olm message does not decrypt") from exc

    def __repr__(self) -> str:
        return "OlmSession(<secret>)"


class OlmAccount:
    """A device's vodozemac ``Account``: identity, signing key, one-time keys."""

    __slots__ = ("_account",)

    def __init__(self, account: vodozemac.Account) -> None:
        self._account = account

    @classmethod
    def create(cls) -> OlmAccount:
        return cls(vodozemac.Account())

    @classmethod
    def from_pickle(cls, pickle: str, pickle_key: bytes) -> OlmAccount:
        """Raises DecryptionError if the pickle or the key is wrong."""
        return cls(unpickle(vodozemac.Account.from_pickle, pickle, pickle_key, "Olm account"))

    def pickle(self, pickle_key: bytes) -> str:
        return pickle_with(self._account, pickle_key)

    @property
    def identity_key(self) -> bytes:
        """The raw 32-byte Curve25519 identity key."""
        return self._account.curve25519_key.to_bytes()

    @property
    def signing_key(self) -> bytes:
        """The raw 32-byte Ed25519 key."""
        return _b64decode(self._account.ed25519_key.to_base64())

    @property
    def max_one_time_keys(self) -> int:
        return self._account.max_number_of_one_time_keys

    def sign(self, context: bytes, message: bytes) -> bytes:
        """A raw 64-byte Ed25519 signature over ``context || 0x00 || message``."""
        signature = _b64decode(self._account.sign(signed_message(context, message)).to_base64())
        if len(signature) != 64:  # pragma: no cover - vodozemac output
            raise LocalError("unexpected signature length")
        return signature

    def generate_one_time_keys(self, count: int) -> list[OneTimeKey]:
        """Create ``count`` keys and return every key not yet published.

        Call :meth:`mark_keys_as_published` once the server has accepted them.
        """
        if count > 0:
            self._account.generate_one_time_keys(count)
        return [
            OneTimeKey(key_id=key_id, key=key.to_bytes(), fallback=False)
            for key_id, key in sorted(self._account.one_time_keys.items())
        ]

    def generate_fallback_key(self) -> OneTimeKey:
        """Create a new fallback key (the previous one keeps working for a while)."""
        self._account.generate_fallback_key()  # type: ignore[attr-defined]
        key = self.unpublished_fallback_key()
        if key is None:  # pragma: no cover - vodozemac just made one
            raise LocalError("fallback key missing after generation")
        return key

    def unpublished_fallback_key(self) -> OneTimeKey | None:
        # ``fallback_key`` is missing from vodozemac's stub; it maps key id -> public key.
        keys: dict[str, vodozemac.Curve25519PublicKey] = self._account.fallback_key  # type: ignore[attr-defined]
        for key_id, key in keys.items():
            return OneTimeKey(key_id=key_id, key=key.to_bytes(), fallback=True)
        return None

    def mark_keys_as_published(self) -> None:
        self._account.mark_keys_as_published()

    def create_outbound_session(self, identity_key: bytes, one_time_key: bytes) -> OlmSession:
        """Start a session to a device from its identity key and one claimed key.

        Raises:
            DecryptionError: a key is malformed.
        """
        try:
            session = self._account.create_outbound_session(
                _curve(identity_key), _curve(one_time_key)
            )
        except ValueError as exc:
            raise DecryptionError("cannot create Olm session") from exc
        return OlmSession(session)

    def create_inbound_session(
        self, sender_identity_key: bytes, olm_type: int, ciphertext: bytes
    ) -> tuple[OlmSession, bytes]:
        """Answer a pre-key message: returns the new session and the plaintext.

        Consumes the one-time key the sender used (the fallback key stays).

        Raises:
            DecryptionError: not a pre-key message, the key is unknown or used, or forged.
        """
        if olm_type != OLM_PRE_KEY:
            raise DecryptionError("not a pre-key message")
        try:
            pre_key = vodozemac.AnyOlmMessage.from_parts(olm_type, ciphertext).to_pre_key()
            if pre_key is None:
                raise DecryptionError("not a pre-key message")
            session, plaintext = self._account.create_inbound_session(
                _curve(sender_identity_key), pre_key
            )
        except ValueError as exc:
            raise DecryptionError("cannot create inbound Olm session") from exc
        return OlmSession(session), plaintext

    def __repr__(self) -> str:
        return "OlmAccount(<secret>)"
