from tests.e2e.conftest import _close_raw_connections, server

__all__ = ["_close_raw_connections", "server"]
