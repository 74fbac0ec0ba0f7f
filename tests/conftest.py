"""Settings shared by every test: hypothesis profiles, no skipped tests, leak attribution.

``HYPOTHESIS_PROFILE=fuzz`` runs the parsers' fuzz tests much longer than CI does.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Generator, Iterator

import pytest
from hypothesis import settings

# Signing and msgspec validation make some examples slow on a loaded CI machine; a deadline
# there would fail on timing, not on behaviour. CI runs derandomized so a failure reproduces.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("fuzz", deadline=None, max_examples=20_000)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Project rule: a test that cannot run must not pass silently (skip, skipif, xfail).
    report = yield
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "xfail"
        report.outcome = "failed"
        report.longrepr = f"skipped and xfailed tests are not allowed: {reason}"
    return report


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    # An unclosed socket or transport warns when it is collected, and filterwarnings=error
    # fails whichever test is running then. Collecting after each test blames the leaker.
    yield
    gc.collect()
