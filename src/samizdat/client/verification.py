"""Verifying contacts: safety numbers, SAS, key changes and consent (protocol §10.4).

* The **safety number** (crypto/safety.py) covers both user keys: shown as 60 digits and
  as a QR code carrying ``samizdat:safety/<digits>``. Comparing it (or scanning) and
  running ``verify --manual`` marks the contact verified.
* **Interactive SAS**: both users run ``samizdat verify NAME``. Each side sends a
  ``VerifyKey`` (a fresh vodozemac SAS key) over the normal Olm channel, derives the
  same 3×4 digits and 7 emoji from both SAS keys and both user keys, asks its user to
  compare, then sends a ``VerifyMac`` over its own user key. A side that receives a MAC
  that checks marks the contact verified.
* **Key changes**: when a contact's user key changes (they re-created their identity and
  sent a new invite, added with ``add --replace``), the safety number changes. If the
  contact was verified, it is flagged and sending raises ``KeyChanged`` until the user
  runs ``samizdat trust NAME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from samizdat.client import records as rec
from samizdat.client.connection import now_ms
from samizdat.client.messaging import verify_card
from samizdat.client.peers import peer_from_contact, send_controls
from samizdat.crypto.safety import safety_number
from samizdat.crypto.sas import Sas, SasCode
from samizdat.errors import DecryptionError, KeyChanged, LocalError
from samizdat.protocol.control import VerifyKey, VerifyMac
from samizdat.protocol.keys import decode_device_list
from samizdat.protocol.links import decode_invite

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = [
    "SAFETY_QR_PREFIX",
    "safety_qr_text",
    "mark_verified",
    "trust",
    "check_can_send",
    "replace_contact",
    "verify",
    "on_verify_control",
]

SAFETY_QR_PREFIX = "samizdat:safety/"
_INFO = "samizdat/verify/v1"
#: A VerifyKey older than this is ignored (a verification left half done).
_FRESH_MS = 10 * 60 * 1000


class _Pending(msgspec.Struct):
    txn: bytes
    value: bytes
    at: int


def safety_qr_text(client: Client, name: str) -> str:
    """What the safety-number QR code carries; equal on both sides."""
    contact = client._contact_by_name(name)
    return SAFETY_QR_PREFIX + safety_number(client.own_user_key, contact.user_key)


def _update(client: Client, name: str, **changes: bool) -> None:
    with client._store.locked():
        contact = client._contact_by_name(name)
        for key, value in changes.items():
            setattr(contact, key, value)
        client._save_contact(contact)


def mark_verified(client: Client, name: str) -> None:
    """The user compared the safety number (or scanned its QR code) and it matched."""
    _update(client, name, verified=True, key_changed=False)


def trust(client: Client, name: str) -> None:
    """Consent to a changed key: sending resumes (the contact is no longer verified)."""
    _update(client, name, key_changed=False)


def check_can_send(contact: rec.Contact) -> None:
    if contact.key_changed:
        raise KeyChanged(
            "the safety number with this contact changed since you verified it; "
            "compare it again, then run `samizdat trust NAME` to send"
        )


def replace_contact(client: Client, link: str, name: str) -> bool:
    """Point the contact ``name`` at the user of a new invite (their key changed).

    Returns True if the key changed while the contact was verified (sending now waits
    for ``trust``).

    Raises:
        NotFound: no such contact. ProtocolError: the invite does not verify.
    """
    verified = verify_card(decode_invite(link).card, now_ms())
    user_key = verified.device_list.user_key
    with client._store.locked():
        contact = client._contact_by_name(name)
        if contact.user_key == user_key:
            return False
        if client._store.get("user", user_key) is not None:
            raise LocalError("this person is already a contact (under another name)")
        for old in decode_device_list(contact.devices).devices:
            client._store.delete("ident", old.identity_key)
        client._store.delete("user", contact.user_key)
        flagged = contact.verified
        contact.user_key = user_key
        contact.devices = verified.card.devices
        contact.device_list_version = verified.device_list.version
        contact.server_key = verified.descriptor.server_key
        contact.server = verified.card.server
        contact.token = verified.card.token
        contact.answered = False
        contact.verified = False
        contact.key_changed = flagged
        client._save_contact(contact)
        client._index_contact(contact)
    return flagged


def on_verify_control(client: Client, sender_key: bytes, control: VerifyKey | VerifyMac) -> None:
    """Keep a verification message from a contact's device for ``verify`` to pick up."""
    cid = client._store.get("ident", sender_key)
    if cid is None:
        return
    contact = client._contact(cid)
    kind = "vkey" if isinstance(control, VerifyKey) else "vmac"
    value = control.sas_key if isinstance(control, VerifyKey) else control.mac.encode()
    client._store.put(
        kind, contact.user_key, msgspec.msgpack.encode(_Pending(control.txn, value, now_ms()))
    )


def _pending(client: Client, kind: str, user_key: bytes, since: int) -> _Pending | None:
    raw = client._store.get(kind, user_key)
    if raw is None:
        return None
    pending = msgspec.msgpack.decode(raw, type=_Pending)
    return pending if pending.at >= since else None


async def _wait(
    client: Client, kind: str, user_key: bytes, since: int, deadline: float
) -> _Pending:
    loop = asyncio.get_running_loop()
    while True:
        found = _pending(client, kind, user_key, since)
        if found is not None:
            return found
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise LocalError("the contact did not answer the verification in time")
        async with contextlib.aclosing(client.listen(timeout=min(0.3, remaining))) as it:
            async for _ in it:
                if _pending(client, kind, user_key, since) is not None:
                    break


async def verify(
    client: Client,
    name: str,
    confirm: Callable[[SasCode], Awaitable[bool]],
    timeout: float,  # noqa: ASYNC109
) -> SasCode:
    """Interactive SAS verification with ``name`` (they run the same at the same time).

    Raises:
        LocalError: no answer in time, or the user said the codes differ.
        DecryptionError: their MAC does not match (someone is in the middle).
    """
    contact = client._contact_by_name(name)
    peer = peer_from_contact(contact)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    started = now_ms()
    sas = Sas()
    txn = secrets.token_bytes(16)
    with client._store.locked():
        client._store.delete("vmac", contact.user_key)
    await send_controls(client, peer, [VerifyKey(txn=txn, sas_key=sas.public_key)])
    their = await _wait(client, "vkey", contact.user_key, started - _FRESH_MS, deadline)
    established = sas.establish(their.value)
    mine = client.own_user_key.hex() + sas.public_key.hex()
    theirs = contact.user_key.hex() + their.value.hex()
    info = "|".join([_INFO, *sorted([mine, theirs])])
    code = established.code(info)
    if not await confirm(code):
        raise LocalError("the codes differ: the contact is not verified")
    mac = established.mac(client.own_user_key.hex(), f"{info}|{client.own_user_key.hex()}")
    await send_controls(client, peer, [VerifyMac(txn=their.txn, mac=mac)])
    answer = await _wait(client, "vmac", contact.user_key, started, deadline)
    if answer.txn != txn:
        raise DecryptionError("the verification answer is for another attempt")
    established.verify_mac(
        contact.user_key.hex(), f"{info}|{contact.user_key.hex()}", answer.value.decode()
    )
    with client._store.locked():
        client._store.delete("vkey", contact.user_key)
        client._store.delete("vmac", contact.user_key)
    mark_verified(client, name)
    return code
