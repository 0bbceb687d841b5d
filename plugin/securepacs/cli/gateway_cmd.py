"""``securepacs gateway``: registered from the gateway's own command module.

The gateway's arguments live beside the gateway (``securepacs.gateway.command``) so that
``python -m securepacs.gateway`` can parse them without importing the CLI layer above it.
"""

from securepacs.gateway.command import register

__all__ = ["register"]
