"""Cryptography with no I/O: signatures, sealing, padding, safety numbers, at-rest encryption."""
