"""The blind relay (DESIGN §1, docs/relay.md, protocol §11): an HTTPS site to everyone
but holders of a relay link, a byte splice to configured samizdat servers for them."""

from samizdat.relay.config import RelayIdentity, Upstream, load_identity, parse_upstream
from samizdat.relay.server import Counters, Relay, RelayLimits

__all__ = [
    "Counters",
    "Relay",
    "RelayIdentity",
    "RelayLimits",
    "Upstream",
    "load_identity",
    "parse_upstream",
]
