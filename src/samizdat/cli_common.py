"""What every CLI module shares: where the home is, the passphrase, printing a line."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from samizdat.errors import LocalError

__all__ = ["home", "passphrase", "out"]


def home(args: argparse.Namespace) -> Path:
    """``--home``, else ``$SAMIZDAT_HOME``, else ``~/.samizdat``."""
    if args.home:
        return Path(args.home).expanduser()
    return Path(os.environ.get("SAMIZDAT_HOME") or "~/.samizdat").expanduser()


def passphrase(confirm: bool = False) -> str:
    """``$SAMIZDAT_PASSPHRASE``, else a prompt (twice with ``confirm``)."""
    env = os.environ.get("SAMIZDAT_PASSPHRASE")
    if env is not None:
        return env
    first = getpass.getpass("passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise LocalError("the passphrases differ")
    return first


def out(line: str) -> None:
    """One line on stdout, flushed at once (scripts read it as it comes)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
