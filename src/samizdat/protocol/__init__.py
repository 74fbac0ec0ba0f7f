"""The wire protocol, with no I/O: frames, descriptors, invites, links (docs/protocol.md)."""
