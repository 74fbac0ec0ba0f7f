"""protocol/groups.py: who may change a group, checked against a model (hypothesis)."""

from __future__ import annotations

import os

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.crypto.signing import SigningKey
from samizdat.errors import ProtocolError
from samizdat.protocol.control import (
    GroupBox,
    GroupText,
    RoomKey,
    VerifyKey,
    decode_control,
    decode_group_box,
    decode_group_text,
    decode_link_code,
    encode_control,
    encode_group_box,
    encode_group_text,
)
from samizdat.protocol.groups import (
    GROUP_STATE_CONTEXT,
    GroupMember,
    GroupState,
    SignedGroupState,
    apply_update,
    encode_group_state,
)

KEYS = [SigningKey.generate() for _ in range(5)]
GROUP_ID = b"g" * 16


def sign(key: SigningKey, state: GroupState) -> SignedGroupState:
    body = encode_group_state(state)
    return SignedGroupState(
        body=body, signer=key.public_bytes, signature=key.sign(GROUP_STATE_CONTEXT, body)
    )


def initial() -> GroupState:
    return GroupState(
        group_id=GROUP_ID,
        version=1,
        name="g",
        members=[GroupMember(KEYS[0].public_bytes, True), GroupMember(KEYS[1].public_bytes)],
    )


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "promote", "rename", "leave", "replay"]),
        st.integers(0, 4),  # actor
        st.integers(0, 4),  # target
    ),
    max_size=25,
)


def proposal(state: GroupState, op: str, actor: bytes, target: bytes) -> GroupState | None:
    """The state an actor proposes for ``op`` (None when it makes no sense)."""
    members = list(state.members)
    if op == "add" and state.member(target) is None:
        members.append(GroupMember(target))
    elif op == "remove" and state.member(target) is not None and target != actor:
        members = [m for m in members if m.user_key != target]
    elif op == "promote" and state.member(target) is not None:
        members = [GroupMember(m.user_key, m.admin or m.user_key == target) for m in members]
    elif op == "leave" and state.member(actor) is not None:
        members = [m for m in members if m.user_key != actor]
        if not any(m.admin for m in members) and members:
            members[0] = GroupMember(members[0].user_key, True)
    elif op == "rename":
        return msgspec.structs.replace(state, name=state.name + "!", version=state.version + 1)
    else:
        return None
    if not members:
        return None
    return GroupState(
        group_id=state.group_id, version=state.version + 1, name=state.name, members=members
    )


def allowed(state: GroupState, new: GroupState, actor: bytes) -> bool:
    """The rule of protocol §10.2, written independently of apply_update."""
    if not any(m.admin for m in new.members):
        return False
    if state.is_admin(actor):
        return True
    others = [m for m in state.members if m.user_key != actor]
    return state.member(actor) is not None and new.members == others and new.name == state.name


@settings(max_examples=150, deadline=None)
@given(ops)
def test_apply_update_matches_the_model(sequence: list[tuple[str, int, int]]) -> None:
    state = initial()
    history = [sign(KEYS[0], state)]
    assert apply_update(None, history[0]) == state
    for op, a, t in sequence:
        actor, target = KEYS[a], KEYS[t].public_bytes
        if op == "replay":
            with pytest.raises(ProtocolError):
                apply_update(state, history[t % len(history)])
            continue
        new = proposal(state, op, actor.public_bytes, target)
        if new is None:
            continue
        signed = sign(actor, new)
        if allowed(state, new, actor.public_bytes):
            assert apply_update(state, signed) == new
            state = new
            history.append(signed)
        else:
            with pytest.raises(ProtocolError):
                apply_update(state, signed)
        assert any(m.admin for m in state.members)
        assert [s for s in history if s.body == encode_group_state(state)]


def test_forged_and_foreign_updates_are_rejected() -> None:
    state = initial()
    new = msgspec.structs.replace(state, version=2, name="x")
    good = sign(KEYS[0], new)
    forged = SignedGroupState(body=good.body, signer=KEYS[1].public_bytes, signature=good.signature)
    with pytest.raises(ProtocolError) as exc:
        apply_update(state, forged)
    assert exc.value.code == "bad_signature"
    other = msgspec.structs.replace(new, group_id=b"h" * 16)
    with pytest.raises(ProtocolError):
        apply_update(state, sign(KEYS[0], other))
    # An invitation must be signed by an admin of the state it carries.
    with pytest.raises(ProtocolError):
        apply_update(None, sign(KEYS[1], state))
    # Duplicate members and admin-less groups are malformed.
    dup = msgspec.structs.replace(new, members=[*state.members, state.members[1]])
    with pytest.raises(ProtocolError):
        apply_update(state, sign(KEYS[0], dup))


@given(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**53),
    st.text(max_size=200),
)
def test_group_text_and_box_round_trip(group_id: bytes, msg_id: bytes, at: int, text: str) -> None:
    value = GroupText(group_id=group_id, msg_id=msg_id, sent_at=at, text=text)
    assert decode_group_text(encode_group_text(value)) == value
    box = GroupBox(v=1, session_id=text[:64], megolm=msg_id)
    assert decode_group_box(encode_group_box(box)) == box


@given(st.binary(max_size=512))
def test_parsers_reject_garbage_with_documented_errors(data: bytes) -> None:
    from samizdat.errors import DecryptionError

    try:
        decode_control(data)
    except DecryptionError:
        pass
    try:
        decode_group_text(data)
    except DecryptionError:
        pass
    decode_group_box(data)  # None or a box, never an exception
    with pytest.raises(ProtocolError):
        decode_link_code("samizdat:link/" + data.hex())


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16))
def test_controls_round_trip(key: bytes, txn: bytes) -> None:
    for control in (
        VerifyKey(txn=txn, sas_key=key),
        RoomKey(group_id=txn, session_id="s", session_key=key.hex()),
    ):
        assert decode_control(encode_control(control)) == control


def test_state_for_a_thousand_members_fits_one_payload() -> None:
    members = [GroupMember(os.urandom(32), i == 0) for i in range(1000)]
    state = GroupState(group_id=GROUP_ID, version=1, name="n" * 64, members=members)
    assert len(sign(KEYS[0], state).body) < 48_000


def test_secrets_stay_out_of_repr() -> None:
    from samizdat.client.devices import DeviceInfo
    from samizdat.crypto.megolm import MegolmInbound, MegolmOutbound
    from samizdat.crypto.sas import Sas
    from samizdat.protocol.control import LinkGrant, SyncItem

    outbound = MegolmOutbound.create()
    key = outbound.session_key()
    room_key = RoomKey(group_id=GROUP_ID, session_id=outbound.session_id, session_key=key)
    shown = " ".join(
        repr(x)
        for x in (
            outbound,
            MegolmInbound.from_session_key(key),
            Sas(),
            room_key,
            SyncItem(),
            DeviceInfo(id="ab" * 16, current=True),
        )
    )
    assert key not in shown and "ab" * 16 not in shown
    assert "Grant(<secret>)" in LinkGrant.__repr__(None)  # type: ignore[arg-type]
