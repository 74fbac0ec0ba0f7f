"""fuzz/targets.py in CI: seeds parse; random bytes raise only documented errors."""

from __future__ import annotations

import pytest
from fuzz.targets import TARGETS, seeds
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=200)
@given(data=st.binary(max_size=2048))
def test_random_bytes_raise_only_documented_errors(name: str, data: bytes) -> None:
    target = TARGETS[name]
    try:
        target.run(data)
    except target.allowed:
        pass


@pytest.mark.parametrize(
    "name", ["client_frame", "server_frame", "sealed", "payload", "attachment"]
)
def test_seeds_are_valid_inputs(name: str) -> None:
    for seed in seeds(name, count=3):
        TARGETS[name].run(seed)  # raises if the seed is not a valid encoding
