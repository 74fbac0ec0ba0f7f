"""A state change packs into Megolm plaintexts that fit a padding bucket and lose no card."""

from __future__ import annotations

import secrets
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.client.group_outbox import fanout_frames
from samizdat.client.groups import _state_texts
from samizdat.client.peers import Peer
from samizdat.crypto.padding import BUCKETS, pad
from samizdat.crypto.signing import SigningKey
from samizdat.protocol import frames, limits
from samizdat.protocol.control import GroupText, decode_group_text, encode_group_text
from samizdat.protocol.groups import (
    GROUP_STATE_CONTEXT,
    MAX_GROUP_MEMBERS,
    GroupMember,
    GroupState,
    SignedGroupState,
    encode_group_state,
)
from samizdat.protocol.keys import DeviceKeys
from samizdat.protocol.links import ContactCard
from tests.protocol.strategies import contact_cards


def _signed_state(members: int) -> SignedGroupState:
    admin = SigningKey.generate()
    state = GroupState(
        group_id=secrets.token_bytes(16),
        version=1,
        name="g",
        members=[GroupMember(admin.public_bytes, True)]
        + [GroupMember(secrets.token_bytes(32)) for _ in range(members - 1)],
    )
    body = encode_group_state(state)
    return SignedGroupState(
        body=body,
        signer=admin.public_bytes,
        signature=admin.sign(GROUP_STATE_CONTEXT, body),
    )


def _cards_of(texts: list[GroupText]) -> list[ContactCard]:
    return [
        ContactCard(devices=c.devices, server=t.servers[c.server], token=c.token, name=c.name)
        for t in texts
        for c in t.cards
    ]


@settings(max_examples=15, deadline=None)
@given(
    cards=st.lists(contact_cards, max_size=60),
    members=st.sampled_from([1, 50, MAX_GROUP_MEMBERS]),
    copies=st.integers(min_value=1, max_value=8),
)
def test_parts_fit_the_largest_bucket_and_carry_every_card_once(
    cards: list[ContactCard], members: int, copies: int
) -> None:
    # Repeating the list makes large rosters (hundreds of cards) sharing few servers.
    roster = cards * copies
    signed = _signed_state(members)
    group_id = secrets.token_bytes(16)
    texts = _state_texts(group_id, signed, roster)
    assert texts[0].state == signed and all(t.state is None for t in texts[1:])
    for text in texts:
        encoded = encode_group_text(text)
        assert len(pad(encoded)) <= BUCKETS[-1]  # pad raises beyond the largest bucket
        assert decode_group_text(encoded) == text  # what a member decodes
        assert text.group_id == group_id and text.text == ""
        # A server descriptor once per part, however many of its cards the part holds.
        assert len({s.signature for s in text.servers}) == len(text.servers)
    assert _cards_of(texts) == roster


def test_a_state_alone_is_one_part() -> None:
    signed = _signed_state(MAX_GROUP_MEMBERS)
    texts = _state_texts(secrets.token_bytes(16), signed, [])
    assert len(texts) == 1 and texts[0].state == signed and texts[0].cards == []
    assert _state_texts(secrets.token_bytes(16), None, [])[0].state is None


def test_fanout_frames_split_at_the_device_limit_and_keep_every_device_once() -> None:
    def device() -> DeviceKeys:
        return DeviceKeys(
            device_id=secrets.token_bytes(16),
            signing_key=secrets.token_bytes(32),
            identity_key=secrets.token_bytes(32),
            sealing_key=secrets.token_bytes(32),
        )

    def peer() -> Peer:
        # Only the token matters to a fan-out frame; the rest is never read here.
        nothing: Any = None
        return Peer(b"", nothing, b"", nothing, secrets.token_bytes(32))

    users = [(peer(), [device(), device()]) for _ in range(700)]
    built = fanout_frames(users, b"body", expires_at=123)
    assert len(built) == 2  # 1,400 devices, at most MAX_FANOUT_DEVICES per frame
    for frame in built:
        assert sum(len(t.devices) for t in frame.targets) <= limits.MAX_FANOUT_DEVICES
        assert frame.body == b"body" and frame.expires_at == 123
        frames.decode_client_frame(frames.encode(frame))  # what the server accepts
    sent = [(t.token, d) for frame in built for t in frame.targets for d in t.devices]
    assert sent == [(p.token, d.device_id) for p, ds in users for d in ds]
    assert len({frame.msg_id for frame in built}) == 2
