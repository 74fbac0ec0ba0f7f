"""What every bench that writes docs/performance.md shares: the machine line and the
replacement of its own section (other sections belong to other benches)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["DOCS", "load", "machine", "write_section"]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return (
        f"{os.cpu_count()} cores ({model}), {int(mem) // 1024 // 1024} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def write_section(heading: str, section: str, docs: Path = DOCS) -> None:
    """Replace the ``## heading`` section of ``docs`` with ``section`` (or append it)."""
    text = docs.read_text()
    start = text.find(heading)
    if start < 0:
        docs.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = text.find("\n## ", start + len(heading))
    rest = text[end + 1 :] if end >= 0 else ""
    docs.write_text(text[:start] + section + ("\n" + rest if rest else ""))
