"""Known vulnerabilities of Orthanc itself: one row per CVE, with the upstream release that fixed it.

Sources: the CVE records (CVEProject/cvelistV5; CERT/CC VU#536588 for CVE-2026-5437…5445, all "affected
≤ 1.12.10"; VulDB for CVE-2026-10528, "affected ≤ 1.12.11", patch bae99026ca97) and Orthanc's NEWS (1.12.11
fixes 5437…5445; 1.13.0 fixes 10528). The descriptions are ours, one line each, condensed from those
records. Add a row when Orthanc announces one; the compose test fails when the image's Orthanc is older
than the newest ``fixed_in`` here.

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
    # When part of the fix lives in DCMTK (Orthanc links the system's): the first DCMTK release with it.
    dcmtk_fixed_in: str | None = None
    # What SecurePACS does in front of Orthanc against it. It stays listed (and the platform degraded):
    # Orthanc itself remains vulnerable, and the officer decides whether the mitigation is enough.
    mitigation: str | None = None

    def as_json(self) -> dict[str, str]:
        row = {"id": self.id, "fixedIn": self.fixed_in, "description": self.description}
        if self.dcmtk_fixed_in:
            row["dcmtkFixedIn"] = self.dcmtk_fixed_in
        if self.mitigation:
            row["mitigation"] = self.mitigation
        return row


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
    # Orthanc 1.13.0's NEWS: its static builds also carry a "dcmtk 3.7.0 hot-fix for CVE-2026-10528"
    # (DCMTK commits 885ff0f1, 847d50e8, after the 3.7.0 release). Debian added that part to its dcmtk in
    # 3.7.0+really3.7.0-3 and reverted it in -4 (ABI break; "wait for the 3.7.1 release", Debian #1138713):
    # Debian's Orthanc 1.13.0 with DCMTK 3.7.0 still dies on a 200,000-deep sequence (SIGSEGV, measured on
    # the forky image). Hence the DCMTK condition: a release after 3.7.0. A static build's patched 3.7.0
    # also shows as exposed (it reports "3.7.0"): conservative.
    Cve("CVE-2026-10528", "1.13.0",
        "stack overflow (denial of service) parsing deeply nested DICOM sequences (DcmItem::read)",
        dcmtk_fixed_in="3.7.1",
        mitigation="datasets nesting sequences deeper than 32 levels are refused before Orthanc parses them "
                   "(gateway C-STORE, STOW-RS); Orthanc's unchecked upload and retrieve routes are refused"),
)
