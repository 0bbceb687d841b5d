"""``OrthancRest``: Orthanc's REST API as the plugin calls it in-process, and as every handler receives it.

Why a protocol here, at the bottom: tenancy, the web app and the archive's handlers all talk to Orthanc,
but only the adapter may import ``orthanc``. The adapter's ``RestApi`` implements this; unit tests pass
fakes with the methods they exercise.
"""

from __future__ import annotations

from typing import Any, Protocol


class OrthancRest(Protocol):
    def get_json(self, uri: str) -> Any: ...
    def get_bytes(self, uri: str) -> bytes: ...
    def post_json(self, uri: str, body: Any) -> Any: ...
    def post_bytes(self, uri: str, body: bytes) -> bytes: ...
    def delete(self, uri: str) -> None: ...
    def lookup(self, level: str, uid: str) -> str | None:
        """The Orthanc ID of the resource with this DICOM UID at ``level``, or None."""
        ...
