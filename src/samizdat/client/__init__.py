"""The samizdat client: encrypted local store, contacts, 1:1 messaging."""
