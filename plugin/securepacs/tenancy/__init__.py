"""Which clinic owns which study, decided on the identifiers Orthanc itself indexes.

Owns attribution at C-STORE and STOW-RS, the checks after Orthanc stored an instance, C-FIND and QIDO-RS
answers restricted to the caller's studies, the retrieve policy for C-GET/C-MOVE and the study list.

May import: ``audit``, ``access``, ``pki``, ``store``, ``config``, ``dicom``, ``web``, ``dataset_limits``.
Imported by the web app, the archive and the gateway.
"""
