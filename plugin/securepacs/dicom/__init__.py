"""DICOM facts every layer shares: named status codes and a header reader for raw part-10 bytes.

Owns the constants (never a bare ``0xA700`` elsewhere) and the reading of identifying attributes the way
DCMTK, and so Orthanc, reads them (first copy wins, repeats refused).

May import: nothing of ours. Imported by every layer above.
"""
