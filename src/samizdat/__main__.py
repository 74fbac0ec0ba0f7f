"""``python -m samizdat``."""

from samizdat.cli import main

main()
