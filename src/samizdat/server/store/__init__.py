"""Durable server state behind one :class:`~samizdat.server.store.base.Store` protocol."""
