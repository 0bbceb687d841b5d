"""Running a deployment: the launcher that starts the processes, secrets, service accounts and log checks.

Owns what ``docker compose up`` and ``securepacs serve`` do before and around the archive: internal
certificates and proxy secret on first start, the gateway's service account, nginx's log scrubbing.

May import: the archive, gateway and client layers and everything below. Imported only by ``cli``.
"""
