"""Message actions: replies, reactions, edits, deletions, receipts, timers (protocol §6.2).

A :class:`MessageAction` rides end-to-end encrypted in ``Payload.action`` (1:1, over Olm),
``GroupText.action`` (groups, over Megolm) and ``SentCopy.action`` (to the sender's own
other devices). The server never sees one; it sees only ``expires_at`` on the envelope of
a disappearing message, so that it can drop the entry on time.

The second half is the per-message state every device folds the actions into
(:func:`apply`). It is order-independent — each field is a last-writer-wins register or a
grow-only set keyed by ``(sent_at, msg_id)`` — so devices that receive the same actions
in different orders show the same message. No I/O here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from samizdat.errors import DecryptionError
from samizdat.protocol.types import Millis, MsgId

__all__ = [
    "MAX_EMOJI",
    "MAX_RECEIPT_IDS",
    "MAX_TIMER_SECONDS",
    "Reaction",
    "ReceiptKind",
    "Receipt",
    "MessageAction",
    "check_action",
    "Event",
    "Edit",
    "ReactionMark",
    "MessageState",
    "apply",
    "view_text",
]

#: Longest reaction in bytes of UTF-8 (one emoji with modifiers and joiners).
MAX_EMOJI: Final = 32
#: Most message ids one receipt acknowledges.
MAX_RECEIPT_IDS: Final = 256
#: Longest disappearing-message timer: four weeks, as Signal.
MAX_TIMER_SECONDS: Final = 28 * 24 * 3600

_Emoji = Annotated[str, Meta(max_length=MAX_EMOJI)]


class Reaction(msgspec.Struct, frozen=True):
    """The author's reaction to ``target``; an empty ``emoji`` removes it."""

    target: MsgId
    emoji: _Emoji


class ReceiptKind(StrEnum):
    DELIVERED = "delivered"
    READ = "read"


class Receipt(msgspec.Struct, frozen=True):
    kind: ReceiptKind
    targets: Annotated[list[MsgId], Meta(min_length=1, max_length=MAX_RECEIPT_IDS)]
    #: The group the acknowledged messages were sent to (receipts travel over Olm, to
    #: the author's devices only, never to the whole group).
    group_id: Annotated[bytes, Meta(min_length=16, max_length=16)] | None = None


class MessageAction(msgspec.Struct, frozen=True, omit_defaults=True):
    """At most one of ``react``/``edit``/``delete``/``receipt``/``timer``.

    With none of them the payload is a message shown in the conversation: its text,
    quoting ``reply_to`` if set, deleted everywhere at ``expires_at`` if set. With one,
    it changes existing state and is not shown itself; ``edit`` takes the payload's text.
    """

    reply_to: MsgId | None = None
    react: Reaction | None = None
    edit: MsgId | None = None
    delete: MsgId | None = None
    receipt: Receipt | None = None
    #: The conversation's disappearing-message timer from now on, in seconds (0: off).
    timer: Annotated[int, Meta(ge=0, le=MAX_TIMER_SECONDS)] | None = None
    #: This message disappears at this time (ms since the epoch) from every device.
    expires_at: Millis | None = None

    @property
    def is_message(self) -> bool:
        """A new message in the conversation (text, maybe a reply), not a change."""
        changes = (self.react, self.edit, self.delete, self.receipt, self.timer)
        return all(c is None for c in changes)

    def __repr__(self) -> str:
        return "MessageAction(<secret>)"


def check_action(action: MessageAction) -> MessageAction:
    """Raise DecryptionError unless ``action`` carries at most one change.

    Raised as a decryption error so that the entry is dropped like any malformed one.
    """
    changes = (action.react, action.edit, action.delete, action.receipt, action.timer)
    if sum(c is not None for c in changes) > 1:
        raise DecryptionError("a message action with more than one change")
    if action.reply_to is not None and not action.is_message:
        raise DecryptionError("a reply that is also a change")
    return action


# -- per-message state ---------------------------------------------------------------------


class Event(msgspec.Struct, frozen=True):
    """One received action about one message, as a device stores it."""

    author: bytes
    msg_id: bytes
    sent_at: int
    action: MessageAction
    #: The new text of an edit.
    text: str = ""

    @property
    def order(self) -> tuple[int, bytes]:
        return (self.sent_at, self.msg_id)


class Edit(msgspec.Struct, frozen=True):
    sent_at: int
    msg_id: bytes
    text: str


class ReactionMark(msgspec.Struct, frozen=True):
    sent_at: int
    msg_id: bytes
    #: Empty once removed (kept so that an older reaction arriving late stays overridden).
    emoji: str


class MessageState(msgspec.Struct, frozen=True):
    """What a device knows about one message besides its original text."""

    #: The user who wrote the message: only they may edit or delete it.
    author: bytes
    reply_to: bytes | None = None
    expires_at: int | None = None
    #: Every edit (kept on the author's devices), or only the newest (elsewhere).
    edits: tuple[Edit, ...] = ()
    #: Each reacting user's newest reaction.
    reactions: tuple[tuple[bytes, ReactionMark], ...] = ()
    deleted: bool = False
    delivered: frozenset[bytes] = frozenset()
    read: frozenset[bytes] = frozenset()


def apply(state: MessageState, event: Event, keep_edits: bool) -> MessageState:
    """Fold one action into ``state``; applying a set of events in any order gives one result.

    ``keep_edits`` keeps every edit (the author's devices); otherwise only the newest
    text is kept, so a receiver holds no history of what the author changed.
    """
    action = event.action
    if state.deleted:
        return state
    if action.delete is not None:
        if event.author != state.author:
            return state
        return MessageState(author=state.author, deleted=True, expires_at=state.expires_at)
    if action.edit is not None:
        if event.author != state.author:
            return state
        edit = Edit(sent_at=event.sent_at, msg_id=event.msg_id, text=event.text)
        # A total order (text breaks ties) keeps the result independent of arrival order.
        edits = tuple(sorted({*state.edits, edit}, key=lambda e: (e.sent_at, e.msg_id, e.text)))
        return msgspec.structs.replace(state, edits=edits if keep_edits else edits[-1:])
    if action.react is not None:
        mark = ReactionMark(sent_at=event.sent_at, msg_id=event.msg_id, emoji=action.react.emoji)
        marks = dict(state.reactions)
        held = marks.get(event.author)
        if held is None or (held.sent_at, held.msg_id, held.emoji) < (
            mark.sent_at,
            mark.msg_id,
            mark.emoji,
        ):
            marks[event.author] = mark
        return msgspec.structs.replace(state, reactions=tuple(sorted(marks.items())))
    if action.receipt is not None:
        if action.receipt.kind == ReceiptKind.READ:
            return msgspec.structs.replace(
                state,
                read=state.read | {event.author},
                delivered=state.delivered | {event.author},
            )
        return msgspec.structs.replace(state, delivered=state.delivered | {event.author})
    return state


def view_text(state: MessageState, original: str) -> str:
    """The text to show: nothing once deleted, else the newest edit, else the original."""
    if state.deleted:
        return ""
    return state.edits[-1].text if state.edits else original
