"""Building and opening the client-to-client layers (protocol/envelope.py), no I/O.

Glue between crypto/ (which knows vodozemac and ECIES) and protocol/ (which knows the
wire structures): signing device lists and one-time keys, sealing an Olm message to a
device, opening a mailbox entry, and verifying a contact card.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Final

import msgspec

from samizdat.crypto.olm import OLM_PRE_KEY, OlmAccount, OlmSession, OneTimeKey
from samizdat.crypto.sealing import SEALED_BOX_VERSION, SealedParts, SealingKey, seal
from samizdat.crypto.signing import SigningKey
from samizdat.errors import DecryptionError, ErrorCode, ProtocolError
from samizdat.protocol.descriptor import Descriptor, open_descriptor
from samizdat.protocol.envelope import (
    Sealed,
    SealedBox,
    decode_sealed,
    decode_sealed_box,
    encode_struct,
)
from samizdat.protocol.keys import (
    AUTH_CONTEXT,
    DEVICE_LIST_CONTEXT,
    ONE_TIME_KEY_CONTEXT,
    DeviceKeys,
    DeviceList,
    SignedDeviceList,
    SignedKey,
    auth_message,
    decode_device_list,
    device_id_for,
    one_time_key_message,
)
from samizdat.protocol.links import ContactCard

__all__ = [
    "KEEP_OLM_SESSIONS",
    "KEEP_RETIRED_SESSION_IDS",
    "VerifiedCard",
    "device_keys",
    "sign_device_list",
    "sign_one_time_key",
    "auth_proof",
    "seal_to_device",
    "open_entry",
    "decrypt_olm",
    "retire_sessions",
    "verify_card",
]

#: Olm sessions kept per remote device, newest first. Both sides may start one at once, and
#: a message still on its way (a slow mailbox, a second device) may use an older one: with
#: 4 kept, the session fuzzer (fuzz/sessions.py) saw such messages lost.
KEEP_OLM_SESSIONS: Final = 16
#: Ids of sessions let go past KEEP_OLM_SESSIONS remembered per remote device, so that a
#: late pre-key message of one does not start a copy (``decrypt_olm``).
KEEP_RETIRED_SESSION_IDS: Final = 256


def retire_sessions(retired: list[str], sessions: list[OlmSession]) -> list[str]:
    """``retired`` with the ids of the sessions past ``KEEP_OLM_SESSIONS`` added (they are
    let go), the newest ``KEEP_RETIRED_SESSION_IDS`` kept, oldest first."""
    retired = retired + [s.session_id for s in sessions[KEEP_OLM_SESSIONS:]]
    return retired[-KEEP_RETIRED_SESSION_IDS:]


def device_keys(account: OlmAccount, sealing: SealingKey) -> DeviceKeys:
    return DeviceKeys(
        device_id=device_id_for(account.signing_key),
        signing_key=account.signing_key,
        identity_key=account.identity_key,
        sealing_key=sealing.public_bytes,
    )


def sign_device_list(
    user_key: SigningKey, devices: list[DeviceKeys], version: int, now_ms: int, name: str
) -> SignedDeviceList:
    body = msgspec.msgpack.encode(
        DeviceList(
            user_key=user_key.public_bytes,
            devices=devices,
            version=version,
            issued_at=now_ms,
            display_name=name,
        )
    )
    return SignedDeviceList(body=body, signature=user_key.sign(DEVICE_LIST_CONTEXT, body))


def sign_one_time_key(account: OlmAccount, key: OneTimeKey) -> SignedKey:
    """Sign so that ``protocol.keys.verify_signed_key`` accepts it."""
    message = one_time_key_message(key.key_id, key.key, key.fallback)
    return SignedKey(
        key_id=key.key_id,
        key=key.key,
        signature=account.sign(ONE_TIME_KEY_CONTEXT, message),
        fallback=key.fallback,
    )


def auth_proof(account: OlmAccount, server_key: bytes, nonce: bytes) -> bytes:
    device_id = device_id_for(account.signing_key)
    return account.sign(AUTH_CONTEXT, auth_message(server_key, nonce, device_id))


def seal_to_device(
    recipient: DeviceKeys, sender_identity_key: bytes, olm_type: int, olm: bytes
) -> bytes:
    """The mailbox entry body for one device: SealedBox(Sealed(olm message))."""
    inner = encode_struct(
        Sealed(sender_identity_key=sender_identity_key, olm_type=olm_type, olm=olm)
    )
    parts = seal(recipient.sealing_key, inner)
    return encode_struct(
        SealedBox(
            version=SEALED_BOX_VERSION,
            ephemeral_key=parts.ephemeral_key,
            ciphertext=parts.ciphertext,
        )
    )


def open_entry(sealing: SealingKey, body: bytes) -> Sealed:
    """Open the sealed box of a mailbox entry.

    Raises:
        DecryptionError: malformed, tampered, an unknown version or sealed to another key.
    """
    box = decode_sealed_box(body)
    if box.version != SEALED_BOX_VERSION:
        raise DecryptionError("unknown sealed box version")
    inner = sealing.unseal(SealedParts(ephemeral_key=box.ephemeral_key, ciphertext=box.ciphertext))
    return decode_sealed(inner)


def decrypt_olm(
    sessions: list[OlmSession],
    sealed: Sealed,
    load_account: Callable[[], OlmAccount],
    save_account: Callable[[OlmAccount], None],
    retired: Callable[[], Collection[str]] = frozenset,
) -> bytes:
    """Decrypt an opened entry with the sessions held for its sender, or a new one.

    ``sessions`` (most recently used first) is updated in place: the session that
    decrypted moves to the front, or an inbound session made from a pre-key message is
    inserted there; the account is loaded and saved only in that last case (the
    one-time key it used is consumed).

    A pre-key message of a session we hold that no longer decrypts is a replay: it is
    refused, not answered with a new session. (With the fallback key, which is not
    consumed, it would otherwise start a copy of the session; our replies on that copy
    do not decrypt at the sender, whose ratchet has moved on: found by fuzz/sessions.py.)
    A pre-key message of a session we held and let go (``retired``: ids of sessions
    dropped past ``KEEP_OLM_SESSIONS``) is read with a copy that is not kept, for the
    same reason: kept first, the copy would carry our next messages, which the sender
    cannot read.

    Raises:
        DecryptionError: no session decrypts it and it does not start one.
    """
    replayed = False
    for i, session in enumerate(sessions):
        if sealed.olm_type == OLM_PRE_KEY:
            if not session.matches(sealed.olm_type, sealed.olm):
                continue
            replayed = True
        try:
            plaintext = session.decrypt(sealed.olm_type, sealed.olm)
        except DecryptionError:
            continue
        sessions.insert(0, sessions.pop(i))
        return plaintext
    if replayed:
        raise DecryptionError("replayed pre-key message")
    account = load_account()
    session, plaintext = account.create_inbound_session(
        sealed.sender_identity_key, sealed.olm_type, sealed.olm
    )
    if session.session_id in retired():
        return plaintext
    sessions.insert(0, session)
    save_account(account)
    return plaintext


@dataclass(frozen=True)
class VerifiedCard:
    card: ContactCard
    device_list: DeviceList
    descriptor: Descriptor

    def device(self, identity_key: bytes) -> DeviceKeys | None:
        for device in self.device_list.devices:
            if device.identity_key == identity_key:
                return device
        return None


def verify_card(card: ContactCard, now_ms: int) -> VerifiedCard:
    """Check a card's device list signature and its server descriptor.

    Raises:
        ProtocolError: either does not verify, or the descriptor expired.
    """
    device_list = decode_device_list(card.devices)
    descriptor = open_descriptor(card.server, now_ms)
    if len({d.identity_key for d in device_list.devices}) != len(device_list.devices):
        raise ProtocolError(ErrorCode.BAD_FRAME, "duplicate device in a device list")
    return VerifiedCard(card=card, device_list=device_list, descriptor=descriptor)
