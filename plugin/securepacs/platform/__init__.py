"""What the host runs, and what of it is known to be vulnerable.

The security officer's question is "which Orthanc is this, and what is unfixed in it?". This folder
answers it without asking Orthanc itself: the adapter hands in raw version facts (Orthanc, the python
plugin, DICOMweb, DCMTK); ``versions`` reads them (Debian's "1.13.0+dfsg-1+b1" as well as Orthanc's
"1.10.1" and "mainline"), ``cves`` is the table of known Orthanc vulnerabilities with the release that
fixed each, and ``exposure`` joins the two into the health report's ``platform`` component.
Before Orthanc starts, ``orthanc_binary`` asks the binary its version once and ``orthanc_options`` picks
the configuration that version understands (deploy writes it).

Only admins and auditors (and local processes, on the loopback-only internal route) see versions and the
CVE list; the anonymous health report says only ``ok`` or ``degraded``.

Owns version parsing, the CVE table and the health report's platform component.
May import: nothing of ours. Imported by the archive, ops and cli.
"""
