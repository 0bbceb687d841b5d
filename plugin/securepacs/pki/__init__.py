"""Certificates: the clinics' CA, the internal CA between our own processes, enrolment and renewal.

Owns key generation, certificate profiles, the on-disk CA (serials, revocation list) and the clinic
registry that binds a certificate to an AE title.

May import: ``store``, ``config``, ``dicom``. Imported by tenancy, audit and everything above.
"""
