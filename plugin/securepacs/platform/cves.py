"""Known vulnerabilities of Orthanc itself: one row per CVE, with the upstream release that fixed it.

Sources: the CVE records (CVEProject/cvelistV5; CERT/CC VU#536588 for CVE-2026-5437…5445, all "affected
≤ 1.12.10"; VulDB for CVE-2026-10528, "affected ≤ 1.12.11", patch bae99026ca97 shipped in 1.13.0). The
descriptions are ours, one line each, condensed from those records. Add a row when Orthanc announces one;
the compose test fails when the image's Orthanc is older than the newest ``fixed_in`` here.

Known limit: the comparison is by upstream version. A distribution that backports a fix without a new
upstream release (Debian's "+deb12uN") still shows as exposed here — conservative, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cve:
    id: str
    fixed_in: str  # first upstream Orthanc release with the fix
    description: str

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "fixedIn": self.fixed_in, "description": self.description}


KNOWN: tuple[Cve, ...] = (
    Cve("CVE-2026-5437", "1.12.11",
        "out-of-bounds read in DicomStreamReader while parsing a malformed DICOM meta-header"),
    Cve("CVE-2026-5438", "1.12.11", "memory exhaustion by a gzip bomb in an HTTP request with Content-Encoding: gzip"),
    Cve("CVE-2026-5439", "1.12.11",
        "memory exhaustion by forged uncompressed-size metadata in an uploaded ZIP archive"),
    Cve("CVE-2026-5440", "1.12.11", "memory exhaustion by an unbounded HTTP Content-Length header (no body needed)"),
    Cve("CVE-2026-5441", "1.12.11",
        "out-of-bounds read in the Philips PMSCT_RLE1 decoder, leaking heap data into rendered images"),
    Cve("CVE-2026-5442", "1.12.11",
        "heap buffer overflow in the image decoder via oversized dimensions encoded as VR UL"),
    Cve("CVE-2026-5443", "1.12.11",
        "heap buffer overflow decoding PALETTE COLOR images (32-bit overflow in the pixel length check)"),
    Cve("CVE-2026-5444", "1.12.11",
        "heap buffer overflow parsing a PAM image embedded in a DICOM file (32-bit size overflow)"),
    Cve("CVE-2026-5445", "1.12.11",
        "out-of-bounds read of the PALETTE COLOR lookup table, exposing heap contents in the output image"),
    Cve("CVE-2026-10528", "1.13.0",
        "stack overflow (denial of service) in DCMTK parsing of deeply nested sequences (FromDcmtkBridge)"),
)
