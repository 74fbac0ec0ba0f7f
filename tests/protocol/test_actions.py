"""Message actions (protocol §6.2): the wire checks and the order-independent state."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.errors import DecryptionError
from samizdat.protocol.actions import (
    Event,
    MessageAction,
    MessageState,
    Reaction,
    Receipt,
    ReceiptKind,
    apply,
    check_action,
    view_text,
)
from samizdat.protocol.control import GroupText, decode_group_text, encode_group_text
from samizdat.protocol.envelope import Payload, PayloadKind, decode_payload, encode_struct

AUTHOR, OTHER, THIRD = b"a" * 32, b"b" * 32, b"c" * 32
TARGET = b"t" * 16


def test_payload_carries_an_action_end_to_end() -> None:
    action = MessageAction(reply_to=TARGET, expires_at=1_700_000_000_000)
    payload = Payload(msg_id=b"m" * 16, sent_at=1, kind=PayloadKind.TEXT, text="yes", action=action)
    assert decode_payload(encode_struct(payload)) == payload
    text = GroupText(group_id=b"g" * 16, msg_id=b"m" * 16, sent_at=1, text="x", action=action)
    assert decode_group_text(encode_group_text(text)).action == action


def test_an_action_with_two_changes_is_dropped() -> None:
    both = MessageAction(edit=TARGET, delete=TARGET)
    payload = Payload(msg_id=b"m" * 16, sent_at=1, kind=PayloadKind.ACTION, action=both)
    with pytest.raises(DecryptionError):
        decode_payload(encode_struct(payload))
    with pytest.raises(DecryptionError):
        check_action(MessageAction(reply_to=TARGET, react=Reaction(TARGET, "👍")))
    assert check_action(MessageAction(delete=TARGET)).is_message is False


def test_bounds_are_checked_by_the_decoder() -> None:
    raw = msgspec.msgpack.encode(
        {"msg_id": b"m" * 16, "sent_at": 1, "kind": "action", "action": {"timer": -1}}
    )
    with pytest.raises(DecryptionError):
        decode_payload(raw)
    long_emoji = msgspec.msgpack.encode(
        {
            "msg_id": b"m" * 16,
            "sent_at": 1,
            "kind": "action",
            "action": {"react": {"target": TARGET, "emoji": "x" * 33}},
        }
    )
    with pytest.raises(DecryptionError):
        decode_payload(long_emoji)


_users = st.sampled_from([AUTHOR, OTHER, THIRD])


@st.composite
def _events(draw: st.DrawFn) -> Event:
    author = draw(_users)
    sent_at = draw(st.integers(0, 20))
    # Few ids, so that ties in (sent_at, msg_id) happen too.
    msg_id = draw(st.sampled_from([b"1" * 16, b"2" * 16, b"3" * 16]))
    kind = draw(st.sampled_from(["edit", "delete", "react", "unreact", "delivered", "read"]))
    action = {
        "edit": MessageAction(edit=TARGET),
        "delete": MessageAction(delete=TARGET),
        "react": MessageAction(react=Reaction(TARGET, draw(st.sampled_from(["👍", "❤", "😂"])))),
        "unreact": MessageAction(react=Reaction(TARGET, "")),
        "delivered": MessageAction(receipt=Receipt(ReceiptKind.DELIVERED, [TARGET])),
        "read": MessageAction(receipt=Receipt(ReceiptKind.READ, [TARGET])),
    }[kind]
    text = draw(st.text(max_size=5)) if kind == "edit" else ""
    return Event(author=author, msg_id=msg_id, sent_at=sent_at, action=action, text=text)


def _fold(events: list[Event], keep: bool) -> MessageState:
    state = MessageState(author=AUTHOR)
    for event in events:
        state = apply(state, event, keep_edits=keep)
    return state


@settings(max_examples=300, deadline=None)
@given(st.lists(_events(), max_size=12), st.randoms(use_true_random=False), st.booleans())
def test_any_order_converges(events: list[Event], rnd: object, keep: bool) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    # Duplicates (a retried delivery) change nothing either.
    assert _fold(events, keep) == _fold(shuffled + events[:3], keep)


@settings(max_examples=200, deadline=None)
@given(st.lists(_events(), max_size=12))
def test_rules_hold(events: list[Event]) -> None:
    state = _fold(events, keep=True)
    deleted = any(e.action.delete is not None and e.author == AUTHOR for e in events)
    assert state.deleted == deleted
    if deleted:
        assert view_text(state, "original") == "" and not state.reactions and not state.edits
        return
    # Only the author's edits count, newest (by sent_at, then id) wins.
    edits = [e for e in events if e.action.edit is not None and e.author == AUTHOR]
    newest = max(edits, key=lambda e: (e.sent_at, e.msg_id, e.text), default=None)
    assert view_text(state, "original") == ("original" if newest is None else newest.text)
    # One reaction per person: their newest; an empty one removes it.
    for user, mark in state.reactions:
        mine = [e for e in events if e.action.react is not None and e.author == user]
        assert (
            mark.emoji
            == max((e.sent_at, e.msg_id, e.action.react.emoji) for e in mine if e.action.react)[2]
        )
    assert state.read <= state.delivered
    # A receiver keeps only the newest edit.
    assert len(_fold(events, keep=False).edits) == min(1, len(edits))
