"""The platform SecurePACS runs on: Orthanc, its plugins and DCMTK — what they are, what they offer."""
