"""The samizdat server: mailboxes, key directory, auth and limits over one TLS port (DESIGN §4, §5).

The composition root is :mod:`samizdat.server.app`; everything else receives its
dependencies as arguments.
"""
