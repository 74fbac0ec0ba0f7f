"""samizdat: an end-to-end encrypted messenger that is hard to block."""

__version__ = "0.1.0"
