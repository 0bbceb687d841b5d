"""SecurePACS: a secure cloud DICOM archive built on Orthanc.

Owns nothing itself: each capability is a folder (ARCHITECTURE.md maps them). Folders import only the
layers below them, as the import contract in ``pyproject.toml`` lays down and ``lint-imports`` checks.
"""

__version__ = "0.1.0"
