"""SecurePACS: a secure cloud DICOM archive built on Orthanc."""

__version__ = "0.1.0"
