"""Subcommands of ``securepacs``: thin argument parsing over the service modules."""
