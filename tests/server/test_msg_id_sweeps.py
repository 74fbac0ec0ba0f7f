"""When acknowledgements forget old msg_ids (``MsgIdSweeps``, shared by both stores)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.server.store.base import MSG_ID_RETENTION_MS, MsgIdSweeps


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.integers(min_value=0, max_value=50)),
        max_size=60,
    )
)
def test_at_most_once_per_period_per_device(steps: list[tuple[bytes, int]]) -> None:
    """Against a model: a device is swept on its first ack and then once ``every_ms`` has
    passed since its last sweep, with the retention cutoff of that moment."""
    sweeps = MsgIdSweeps(every_ms=100)
    last: dict[bytes, int] = {}
    now = 1_000_000
    for device, advance in steps:
        now += advance
        due = device not in last or now - last[device] >= 100
        cutoff = sweeps.cutoff(device, now)
        assert (cutoff is not None) == due
        if due:
            assert cutoff == now - MSG_ID_RETENTION_MS
            last[device] = now


def test_past_its_bound_the_memo_starts_over() -> None:
    sweeps = MsgIdSweeps(every_ms=100, max_devices=2)
    assert sweeps.cutoff(b"a", 0) is not None and sweeps.cutoff(b"b", 0) is not None
    assert sweeps.cutoff(b"a", 1) is None
    assert sweeps.cutoff(b"c", 1) is not None  # the memo was full: forgotten, so ...
    assert sweeps.cutoff(b"a", 2) is not None  # ... a is swept again, early but harmless
    assert "a" not in repr(sweeps)
