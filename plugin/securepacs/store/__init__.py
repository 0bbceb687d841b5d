"""SecurePACS's own SQLite database: clinics, AE titles, ownership, accounts, sessions.

Owns the schema, its migrations and the transactions. Orthanc's index stays Orthanc's; this is the
plugin's side of the archive. The gateway opens it read-only.

May import: nothing of ours but ``config``. Imported by every layer above.
"""
