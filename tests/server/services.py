"""Where the tests find PostgreSQL and Redis (services CI starts; their absence fails tests)."""

from __future__ import annotations

import os

import asyncpg

__all__ = ["PG_DSN", "REDIS_URL", "drop_pg_schema"]

PG_DSN = os.environ.get("SAMIZDAT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SAMIZDAT_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def drop_pg_schema(schema: str) -> None:
    """Remove a test's schema and everything in it."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
