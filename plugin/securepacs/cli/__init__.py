"""Subcommands of ``securepacs``: thin argument parsing over the service modules.

Owns argument parsing and exit codes (dcmtk/pynetdicom flag names); each command calls one service function.
May import any layer (it is the top). Imported only by the ``securepacs`` entry point.
"""
