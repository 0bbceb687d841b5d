"""The workstation viewer: OHIF's prebuilt application, vendored at install time and served under ``/ohif/``.

Owns the pinned OHIF release (version and npm integrity hash), its verified, traversal-safe extraction,
the rewrite that moves it from ``/`` to its sub-path without inline scripts, and the ``app-config.js``
we generate (one data source: our tenant-checked DICOMweb).

May import: ``durable``. Imported by ``cli``.
"""
