"""Relays the user added (``samizdat relays add``), kept in the encrypted store.

Stored as the link text under kind ``relay``, keyed by link id. They join the transport
options of every connection (transport/dial.py tries them after direct routes).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from samizdat.client.store import Store
from samizdat.errors import LocalError
from samizdat.protocol.links import decode_relay_link
from samizdat.protocol.relay import RelayLink
from samizdat.transport import TransportOptions

if TYPE_CHECKING:
    from samizdat.client.app import Client

__all__ = ["add_relay", "list_relays", "remove_relay", "with_relays", "add", "listing", "remove"]

_KIND = "relay"


def add_relay(store: Store, link: str) -> RelayLink:
    """Store a relay link; adding the same link again replaces it.

    Raises:
        ProtocolError: not a relay link.
    """
    relay = decode_relay_link(link)
    store.put(_KIND, relay.link_id, link.strip().encode())
    return relay


def list_relays(store: Store) -> list[RelayLink]:
    return [decode_relay_link(raw.decode()) for raw in store.values(_KIND)]


def remove_relay(store: Store, link_id_hex: str) -> RelayLink:
    """Forget the relay whose link id starts with ``link_id_hex``.

    Raises:
        LocalError: no relay, or more than one, matches.
    """
    matches = [r for r in list_relays(store) if r.link_id.hex().startswith(link_id_hex.lower())]
    if len(matches) != 1 or not link_id_hex:
        raise LocalError(f"{len(matches)} relays match {link_id_hex!r}; give more of the id")
    store.delete(_KIND, matches[0].link_id)
    return matches[0]


def with_relays(options: TransportOptions, store: Store) -> TransportOptions:
    """``options`` with the stored relays added."""
    stored = tuple(list_relays(store))
    return replace(options, relays=options.relays + stored) if stored else options


def add(client: Client, link: str) -> RelayLink:
    """Add a relay for ``client`` (stored, and used by its next connection).

    Raises:
        ProtocolError: not a relay link.
    """
    relay = add_relay(client._store, link)
    client.transport = replace(
        client.transport,
        relays=tuple(r for r in client.transport.relays if r.link_id != relay.link_id) + (relay,),
    )
    return relay


def listing(client: Client) -> list[RelayLink]:
    return list_relays(client._store)


def remove(client: Client, link_id_hex: str) -> RelayLink:
    """Forget a relay (see :func:`remove_relay`)."""
    relay = remove_relay(client._store, link_id_hex)
    client.transport = replace(
        client.transport,
        relays=tuple(r for r in client.transport.relays if r.link_id != relay.link_id),
    )
    return relay
