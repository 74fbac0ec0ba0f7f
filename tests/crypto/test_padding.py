"""Padding to size buckets (docs/protocol.md §6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samizdat.crypto.padding import BUCKETS, pad, padme, unpad
from samizdat.errors import DecryptionError, LocalError
from samizdat.protocol import limits

LARGEST = BUCKETS[-1]


def test_every_size_pads_to_a_bucket_and_back() -> None:
    # Exhaustive: every plaintext length up to the largest bucket (bytes chosen to end in
    # 0x00 and 0x80, the bytes that padding itself uses).
    base = bytes((i * 0x80) & 0xFF for i in range(LARGEST))
    for length in range(LARGEST):
        plaintext = base[:length]
        padded = pad(plaintext)
        assert len(padded) in BUCKETS
        assert len(padded) == min(b for b in BUCKETS if b > length)
        assert unpad(padded) == plaintext


@given(st.binary(max_size=LARGEST - 1))
def test_random_plaintexts_round_trip(plaintext: bytes) -> None:
    padded = pad(plaintext)
    assert len(padded) in BUCKETS
    assert unpad(padded) == plaintext


def test_too_large_is_a_local_error() -> None:
    with pytest.raises(LocalError):
        pad(b"x" * LARGEST)


@pytest.mark.parametrize("padded", [b"", b"\x00" * 256, b"abc", b"abc\x80\x01", b"\x81\x00"])
def test_malformed_padding_is_decryption_error(padded: bytes) -> None:
    with pytest.raises(DecryptionError):
        unpad(padded)


@given(st.binary(max_size=600))
def test_unpad_raises_only_decryption_error(data: bytes) -> None:
    try:
        unpad(data)
    except DecryptionError:
        pass


def test_buckets_are_increasing_and_fit_an_envelope() -> None:
    from samizdat.protocol import limits

    assert list(BUCKETS) == sorted(set(BUCKETS))
    # Olm and the sealed box add a few hundred bytes over the largest bucket.
    assert LARGEST + 1024 < limits.MAX_ENVELOPE_BODY


@given(st.integers(0, 1 << 40))
def test_padme_adds_at_most_12_percent_and_is_stable(length: int) -> None:
    padded = padme(length)
    assert length <= padded <= length + length * 12 // 100
    assert padme(padded) == padded
    assert padme(length + 1) >= padded  # longer files never get shorter blobs


def test_padme_leaves_few_lengths() -> None:
    # Files of 1 to 2 MiB fall on 33 lengths (multiples of 32 KiB): ~5 bits, not 20.
    assert len({padme(n) for n in range(1 << 20, 1 << 21)}) == 33
    assert [padme(n) for n in (0, 1, 9, 1_000_001)] == [0, 1, 10, 1_015_808]
    # The largest file is its own Padmé length: no padded blob is ever larger.
    assert padme(limits.MAX_ATTACHMENT) == limits.MAX_ATTACHMENT
