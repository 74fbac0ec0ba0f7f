"""Routing control messages (protocol §10) to the module that handles each kind."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from samizdat.client import devices, group_inbox, verification
from samizdat.client.records import ContactState
from samizdat.protocol.control import (
    DeviceListUpdate,
    GroupUpdate,
    LinkRequest,
    RoomKey,
    SentCopy,
    VerifyKey,
    VerifyMac,
    decode_control,
)

if TYPE_CHECKING:
    from samizdat.client.app import Client, Received

__all__ = ["on_control"]

log = logging.getLogger(__name__)


def on_control(client: Client, sender_key: bytes, data: bytes) -> list[Received]:
    """Handle one control message from the device with Olm identity ``sender_key``;
    returns the messages it made readable (group messages held for a room key or a state).

    Called inside the store transaction of the mailbox entry that carried it.

    Raises:
        DecryptionError: the message is malformed (the entry is dropped).
    """
    cid = client._store.get("ident", sender_key)
    if cid is not None and client._contact(cid).state == ContactState.BLOCKED:
        return []
    control = decode_control(data)
    match control:
        case LinkRequest():
            devices.on_link_request(client, sender_key, control)
        case DeviceListUpdate():
            devices.on_device_list(client, control)
        case SentCopy():
            devices.on_own_payload(client, sender_key, control)
        case GroupUpdate():
            return group_inbox.on_group_update(client, sender_key, control)
        case RoomKey():
            return group_inbox.on_room_key(client, sender_key, control)
        case VerifyKey() | VerifyMac():
            verification.on_verify_control(client, sender_key, control)
        case _:
            log.info("ignored a %s control outside its exchange", type(control).__name__)
    return []
