"""Limits on what a received data set may contain, checked on its bytes before Orthanc's parser sees them.

``nesting``: how deeply sequences nest (CVE-2026-10528: DCMTK's recursive parser exhausts its stack).
``part10``: the same check for a whole DICOM file (STOW-RS parts), reading its file meta information.

Owns the byte-level checks only; the callers decide what to refuse and audit.
May import: nothing of ours but ``dicom``. Imported by tenancy, the archive and the gateway.
"""
