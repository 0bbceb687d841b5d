"""The Orthanc binary that will run: its version, asked once, and the configuration options it offers.

``deploy.py`` writes Orthanc's configuration before Orthanc starts, so it cannot ask the plugin (inside
the running Orthanc, ``adapter.py`` detects what the plugin API offers); it asks the binary instead
(``Orthanc --version``) and writes only options that binary knows. Each option's first release is from
Orthanc's NEWS; 1.10.1 (Debian 12) offers none of them and keeps its configuration as before.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass

ORTHANC = "Orthanc"
_VERSION_RE = re.compile(r"^Orthanc (\d+)\.(\d+)\.(\d+)\b", re.MULTILINE)
VERSION_TIMEOUT_SECONDS = 30


class OrthancBinaryError(RuntimeError):
    """The binary cannot be run or does not say its version; the message names it and what it printed."""


@dataclass(frozen=True)
class OrthancBinary:
    version: tuple[int, int, int]

    @property
    def dicom_tls_knobs(self) -> bool:
        """``DicomTlsMinimumProtocolVersion`` and ``DicomTlsCiphersAccepted`` (1.12.4)."""
        return self.version >= (1, 12, 4)

    @property
    def http_bind_addresses(self) -> bool:
        """``HttpBindAddresses`` (1.12.10)."""
        return self.version >= (1, 12, 10)

    @property
    def maximum_request_body_size(self) -> bool:
        """``MaximumRequestBodySizeMB`` (1.12.11)."""
        return self.version >= (1, 12, 11)

    @property
    def overwrite_instances_mode(self) -> bool:
        """``OverwriteInstances`` as "Never" / "Always" / "IfChanged" (1.13.0; a Boolean before)."""
        return self.version >= (1, 13, 0)

    @property
    def dicomweb_metadata_options(self) -> bool:
        """DICOMweb's ``EnableMetadataCache`` (plugin 1.15), ``MetadataWorkerThreadsCount`` (1.14) and
        ``PublicRoot`` (1.15). Debian pairs the DICOMweb plugin with Orthanc: 1.10.1 with 1.7 (bookworm), 1.12.7
        with 1.20 (trixie), 1.13.0 with 1.24 (forky); the plugin's own version is only known once it runs."""
        return self.version >= (1, 12, 7)

    def __str__(self) -> str:
        return ".".join(map(str, self.version))


@functools.cache
def detect(executable: str = ORTHANC) -> OrthancBinary:
    """Ask ``executable`` once per process for its version."""
    try:
        res = subprocess.run([executable, "--version"], capture_output=True, text=True,
                             timeout=VERSION_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise OrthancBinaryError(f"cannot run {executable!r} --version: {exc}") from None
    match = _VERSION_RE.search(res.stdout)
    if res.returncode != 0 or match is None:
        raise OrthancBinaryError(f"{executable!r} --version exited {res.returncode} without an 'Orthanc X.Y.Z' "
                                 f"line; it printed {(res.stdout + res.stderr)[:200]!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return OrthancBinary((major, minor, patch))
