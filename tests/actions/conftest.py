"""Reuse the real server process fixture of the end-to-end tests."""

from tests.e2e.conftest import _close_raw_connections, server

__all__ = ["_close_raw_connections", "server"]
