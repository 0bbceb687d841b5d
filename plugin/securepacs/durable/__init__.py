"""Files that are never seen half-written: keys, certificates, secrets, cursors, configuration.

Owns the one atomic-replace routine (a private temporary file in the same directory, mode and owner set
before the first byte is visible, fsync, rename or link, directory fsync) that the PKI, the audit trail
and the deployment steps all write through.

May import: nothing of ours. Imported by every layer above.
"""
