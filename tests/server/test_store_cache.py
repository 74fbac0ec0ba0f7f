from __future__ import annotations

from samizdat.server.store.cache import ReadCache


def test_a_read_that_raced_a_write_is_not_memoised() -> None:
    cache: ReadCache[bytes, bytes] = ReadCache(max_entries=2)
    started = cache.generation
    cache.invalidate()  # a write committed while the read was in flight
    cache.put(b"k", b"stale", started)
    assert cache.get(b"k") is None
    cache.put(b"k", b"fresh", cache.generation)
    assert cache.get(b"k") == b"fresh"
    # Bounded: past max_entries it starts over rather than growing.
    cache.put(b"a", b"1", cache.generation)
    cache.put(b"b", b"2", cache.generation)
    assert cache.get(b"k") is None and cache.get(b"b") == b"2"
    assert "fresh" not in repr(cache)


def test_discard_forgets_one_key_and_reads_in_flight() -> None:
    cache: ReadCache[bytes, bytes] = ReadCache()
    cache.put(b"a", b"1", cache.generation)
    cache.put(b"b", b"2", cache.generation)
    started = cache.generation
    cache.discard(b"a")  # another node's write to "a", heard while a read of "c" was out
    assert cache.get(b"a") is None and cache.get(b"b") == b"2"
    cache.put(b"c", b"maybe stale", started)
    assert cache.get(b"c") is None
