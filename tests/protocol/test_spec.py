"""docs/protocol.md stays in step with the code: every code, frame type and limit is specified."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from samizdat.crypto.padding import BUCKETS
from samizdat.errors import ErrorCode
from samizdat.protocol import frames, limits
from samizdat.protocol.descriptor import DESCRIPTOR_CONTEXT
from samizdat.protocol.keys import AUTH_CONTEXT, DEVICE_LIST_CONTEXT, ONE_TIME_KEY_CONTEXT
from samizdat.protocol.links import MAX_LINK

SPEC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def _section(number: int) -> str:
    match = re.search(rf"^## {number}\. .*?(?=^## \d+\. |\Z)", SPEC, re.M | re.S)
    assert match is not None, f"docs/protocol.md has no section {number}"
    # One space for any run of white space, so line wrapping does not matter.
    return " ".join(match.group(0).split())


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_every_error_code_is_in_section_7(code: ErrorCode) -> None:
    assert f"| `{code.value}` |" in _section(7)


@pytest.mark.parametrize(
    "frame", [*frames.ClientFrame.__args__, *frames.ServerFrame.__args__], ids=lambda c: c.__name__
)
def test_every_frame_type_is_in_section_5(frame: Any) -> None:
    assert f't: "{frame.__struct_config__.tag}"' in _section(5)


@pytest.mark.parametrize(
    "name", [n for n in dir(limits) if n.isupper() and isinstance(getattr(limits, n), int)]
)
def test_every_limit_is_in_section_8(name: str) -> None:
    assert f"| {getattr(limits, name)} " in _section(8)


def test_link_limit_buckets_and_contexts_are_specified() -> None:
    assert f"{MAX_LINK} characters" in _section(9)
    assert ", ".join(str(b) for b in BUCKETS[:-1]) + f" or {BUCKETS[-1]}" in _section(6)
    for context in (DEVICE_LIST_CONTEXT, ONE_TIME_KEY_CONTEXT, DESCRIPTOR_CONTEXT, AUTH_CONTEXT):
        assert f"`{context.decode()}`" in _section(3)
