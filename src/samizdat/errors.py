"""The one exception tree of samizdat.

Two branches, as in h11: ``LocalError`` is our own mistake or misuse of an API (a bug);
``RemoteError`` is hostile or broken input from the other side of a connection, or a
refusal the other side sent us. Messages never include keys, tokens, plaintext or ids:
``str()`` of every error is safe to log.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ErrorCode",
    "SamizdatError",
    "LocalError",
    "RemoteError",
    "ProtocolError",
    "ServerRefused",
    "CryptoError",
    "DecryptionError",
    "SignatureError",
    "StoreLocked",
    "WrongPassphrase",
    "NotFound",
    "KeyChanged",
    "ConnectError",
    "StageFailed",
]


class ErrorCode(StrEnum):
    """Error codes carried in ``Error`` frames (docs/protocol.md §7)."""

    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    NOT_AUTHENTICATED = "not_authenticated"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_DEVICE = "unknown_device"
    BAD_TOKEN = "bad_token"
    QUOTA = "quota"
    TOO_MANY_ENVELOPES = "too_many_envelopes"
    ENVELOPE_TOO_LARGE = "envelope_too_large"
    TOO_MANY_KEYS = "too_many_keys"
    NO_KEYS = "no_keys"
    RATE_LIMITED = "rate_limited"
    REPLACED = "replaced"
    CONFLICT = "conflict"
    INTERNAL = "internal"
    #: No readable blob under this id and secret (protocol §5.3.11).
    NOT_FOUND = "not_found"


class SamizdatError(Exception):
    """Base of every error samizdat raises on purpose."""


class LocalError(SamizdatError):
    """A bug or a misuse on our side; never caused by remote input."""


class RemoteError(SamizdatError):
    """Something the other side sent was invalid, or it refused our request."""


class ProtocolError(RemoteError):
    """Input that does not follow docs/protocol.md; carries the code to answer with."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class ServerRefused(RemoteError):
    """The server answered a request with an ``Error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"server refused: {code}: {message}")
        self.code = code
        self.message = message


class CryptoError(RemoteError):
    """Base of cryptographic failures on remote input."""


class DecryptionError(CryptoError):
    """A ciphertext could not be decrypted or authenticated."""


class SignatureError(CryptoError):
    """A signature did not verify."""


class ConnectError(RemoteError):
    """No route to a server completed the protocol hello (or the pin did not match)."""


class StageFailed(ConnectError):
    """One stage of reaching a server failed (transport/, protocol §5.1).

    ``stage`` is ``dns``, ``doh``, ``tcp``, ``tls``, ``pin`` or ``hello``; ``kind`` a short
    machine-readable cause (``nxdomain``, ``timeout``, ``reset``, ``refused``, ``mismatch``,
    ``http_403`` ...). The message names no key, token or address.
    """

    def __init__(self, stage: str, kind: str, message: str = "") -> None:
        super().__init__(message or f"{stage}: {kind}")
        self.stage = stage
        self.kind = kind


class NotFound(LocalError):
    """A name the user gave (a contact, a message) does not exist."""


class KeyChanged(LocalError):
    """A verified contact's user key changed: sending waits for the user's consent."""


class StoreLocked(LocalError):
    """The local store is held by another process for too long."""


class WrongPassphrase(LocalError):
    """The passphrase does not open this local store."""
