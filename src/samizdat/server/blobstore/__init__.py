"""Where attachment ciphertext lives on a server: one Protocol, SQLite and PostgreSQL."""
