"""Group state and who may change it (docs/protocol.md §10.2). No I/O.

Theory of operation
-------------------
A group is a ``GroupState``: a random 16-byte id, a name, a version and its members (user
keys, some of them admins). Every change is a whole new state, msgpack-encoded and signed
with the user key of the member who made it (``SignedGroupState``), and travels
end-to-end encrypted to every member device: the server never sees it.

A member accepts a new state only through :func:`apply_update`, a pure function of the
state it holds and the update:

=====================  ===========================================================
held state             the update is accepted when
=====================  ===========================================================
none (invitation)      the signer is an admin of the new state
state S                same group id, version > S.version, and either the signer is an
                       admin of S (any change: name, members, admins), or the new
                       members are exactly S's minus the signer and nothing else
                       changed (a member leaving)
=====================  ===========================================================

Every state has at least one admin, at most ``MAX_GROUP_MEMBERS`` members and no
duplicate member. A member that is not in the new state has been removed (or left).
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from msgspec import Meta

from samizdat.crypto.signing import verify
from samizdat.errors import ErrorCode, ProtocolError, SignatureError
from samizdat.protocol.types import Key32, Sig64, Text

__all__ = [
    "GROUP_STATE_CONTEXT",
    "MAX_GROUP_MEMBERS",
    "GroupMember",
    "GroupState",
    "SignedGroupState",
    "decode_group_state",
    "encode_group_state",
    "apply_update",
    "check_state",
]

GROUP_STATE_CONTEXT: Final = b"samizdat/group-state/v1"
#: Enough for 1,000 member users; a state of this size still fits in one padded payload.
MAX_GROUP_MEMBERS: Final = 1024

GroupId = Annotated[bytes, Meta(min_length=16, max_length=16)]


class GroupMember(msgspec.Struct, frozen=True, array_like=True):
    """A member: its user key and whether it is an admin (array-encoded: states are big)."""

    user_key: Key32
    admin: bool = False


class GroupState(msgspec.Struct, frozen=True):
    group_id: GroupId
    version: Annotated[int, Meta(ge=1)]
    name: Text
    members: Annotated[list[GroupMember], Meta(min_length=1, max_length=MAX_GROUP_MEMBERS)]

    def member(self, user_key: bytes) -> GroupMember | None:
        for m in self.members:
            if m.user_key == user_key:
                return m
        return None

    def is_admin(self, user_key: bytes) -> bool:
        m = self.member(user_key)
        return m is not None and m.admin

    def user_keys(self) -> list[bytes]:
        return [m.user_key for m in self.members]


class SignedGroupState(msgspec.Struct, frozen=True):
    """``body``: msgpack of a :class:`GroupState`; ``signature`` by ``signer``'s user key."""

    body: Annotated[bytes, Meta(max_length=65536)]
    signer: Key32
    signature: Sig64


_decoder = msgspec.msgpack.Decoder(GroupState)


def encode_group_state(state: GroupState) -> bytes:
    return msgspec.msgpack.encode(state)


def check_state(state: GroupState) -> None:
    """Raises ProtocolError(bad_frame) unless the state is well formed."""
    keys = state.user_keys()
    if len(set(keys)) != len(keys):
        raise ProtocolError(ErrorCode.BAD_FRAME, "duplicate group member")
    if not any(m.admin for m in state.members):
        raise ProtocolError(ErrorCode.BAD_FRAME, "a group needs an admin")


def decode_group_state(signed: SignedGroupState) -> GroupState:
    """Verify the signature and decode; does not check who may sign (see apply_update).

    Raises:
        ProtocolError: ``bad_signature`` or ``bad_frame``.
    """
    try:
        verify(signed.signer, GROUP_STATE_CONTEXT, signed.body, signed.signature)
    except SignatureError as exc:
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "group state signature") from exc
    try:
        state = _decoder.decode(signed.body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "malformed group state") from exc
    check_state(state)
    return state


def apply_update(current: GroupState | None, signed: SignedGroupState) -> GroupState:
    """The state to hold after ``signed``, if the rules of the module docstring allow it.

    Raises:
        ProtocolError: ``bad_signature`` (forged or signed by someone not allowed) or
            ``bad_frame`` (malformed, another group, or not newer).
    """
    new = decode_group_state(signed)
    if current is None:
        if not new.is_admin(signed.signer):
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "group state not signed by an admin")
        return new
    if new.group_id != current.group_id:
        raise ProtocolError(ErrorCode.BAD_FRAME, "state of another group")
    if new.version <= current.version:
        raise ProtocolError(ErrorCode.BAD_FRAME, "group state is not newer")
    if current.is_admin(signed.signer):
        return new
    leaving = [m for m in current.members if m.user_key != signed.signer]
    if (
        current.member(signed.signer) is not None
        and new.members == leaving
        and new.name == current.name
    ):
        return new
    raise ProtocolError(ErrorCode.BAD_SIGNATURE, "only an admin may change the group")
