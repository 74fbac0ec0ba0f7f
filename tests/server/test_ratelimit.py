from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from samizdat.server.ratelimit import KeyedBuckets, TokenBucket

steps = st.lists(st.tuples(st.floats(0, 5), st.floats(0.1, 3)), max_size=60)


@given(rate=st.floats(0.5, 100), burst=st.floats(1, 50), steps=steps)
def test_bucket_never_grants_more_than_it_earns(
    rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = granted = 0.0
    for advance, cost in steps:
        now += advance
        if bucket.allow(now, cost):
            granted += cost
        assert 0 <= bucket.level <= burst
    assert granted <= burst + rate * now + 1e-6


def test_bucket_refills_and_ignores_clock_going_back() -> None:
    bucket = TokenBucket(rate=1, burst=2, now=10)
    assert bucket.allow(10) and bucket.allow(10) and not bucket.allow(10)
    assert not bucket.allow(5)  # time going back adds nothing
    assert bucket.allow(11) and not bucket.allow(11)


def test_keyed_buckets_are_bounded() -> None:
    buckets = KeyedBuckets(rate=1, burst=1, max_keys=3)
    assert buckets.allow(b"a", 0) and not buckets.allow(b"a", 0)
    for key in (b"b", b"c", b"d"):
        assert buckets.allow(key, 0)
    assert len(buckets) == 3
    # "a" was forgotten (least recently used) and starts full again.
    assert buckets.allow(b"a", 0)
