"""Who is asking: accounts, passwords, TOTP, sessions, per-address throttling and the principal they yield.

Owns the account tables' rules (strength, lockout, session lifetimes) and turns credentials into a
:class:`~securepacs.access.principal.Principal`. Deciding what that principal may do with a URI is the
archive's HTTP policy; deciding which studies it may see is tenancy's.

May import: ``store``, ``config``, ``dicom``, ``web``. Imported by tenancy and everything above it.
"""
