"""After Orthanc stores a C-STORE instance: did it index the identifiers the filter admitted?

The C-STORE filter admits an instance on the identifiers tenancy reads; Orthanc then files it under the
identifiers DCMTK reads. Today they agree (the filter is handed Orthanc's own re-encoding of what arrived),
but should they ever differ, the instance would sit in a study tenancy never admitted it to. Orthanc's
instance ID is the SHA-1 of the identifiers it indexed, so the check costs one dictionary look-up per
instance: the filter notes the ID it expects with the calling AE title, the stored-instance callback takes
it back. An instance received over DICOM that the filter did not note is removed, audited as refused and
reported as a security event. Instances that arrived otherwise (REST API, plugins, Lua) never passed the
filter and are left alone: STOW-RS checks Orthanc's answer itself, and only admins reach Orthanc's
``/instances``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from securepacs.audit.recorder import Auditor
from securepacs.dicom import status_codes
from securepacs.dicom.identifiers import InstanceIds
from securepacs.web.orthanc_api import OrthancRest

log = logging.getLogger(__name__)

DICOM_ORIGIN = "dicom"  # the adapter's name for Orthanc's InstanceOrigin.DICOM_PROTOCOL
# Admitted but not yet reported stored. Orthanc stores each instance right after the filter admits it, so a
# few entries per DICOM thread are in flight; the bound only drops what Orthanc never stored (a resend it
# found already stored, a failed write), oldest first.
PENDING_LIMIT = 10_000
MISMATCH_REASON = "Orthanc indexed the instance under other identifiers than the C-STORE filter admitted"


class PendingStores:
    """(expected Orthanc instance ID, calling AE title) -> admissions not yet matched by a stored instance."""

    def __init__(self, limit: int = PENDING_LIMIT):
        self._limit = limit
        self._lock = threading.Lock()
        self._pending: OrderedDict[tuple[str, str], int] = OrderedDict()

    def expect(self, orthanc_id: str, calling_aet: str) -> None:
        key = (orthanc_id, calling_aet)
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + 1
            self._pending.move_to_end(key)
            while len(self._pending) > self._limit:
                self._pending.popitem(last=False)

    def take(self, orthanc_id: str, calling_aet: str) -> bool:
        key = (orthanc_id, calling_aet)
        with self._lock:
            count = self._pending.get(key, 0)
            if count <= 1:
                self._pending.pop(key, None)
            else:
                self._pending[key] = count - 1
            return count > 0

    def __len__(self) -> int:
        return len(self._pending)


def ids_from_tags(tags: Mapping[str, Any]) -> InstanceIds:
    """The identifiers as Orthanc parsed them (its simplified JSON: keyword -> value)."""
    def text(keyword: str) -> str:
        value = tags.get(keyword, "")
        return value.strip() if isinstance(value, str) else ""

    return InstanceIds(text("PatientID"), text("StudyInstanceUID"), text("SeriesInstanceUID"),
                       text("SOPInstanceUID"), text("SOPClassUID"))


class StoredInstanceCheck:
    def __init__(self, orthanc: OrthancRest, audit: Auditor,
                 on_security_event: Callable[[str, dict[str, Any]], None],
                 clinic_of: Callable[[str], str | None]):
        self._orthanc = orthanc
        self._audit = audit
        self._on_event = on_security_event
        self._clinic_of = clinic_of
        self.pending = PendingStores()

    def admitted(self, ids: InstanceIds, calling_aet: str) -> None:
        """The C-STORE filter admitted ``ids`` from ``calling_aet``: Orthanc should store exactly that."""
        self.pending.expect(ids.orthanc_instance, calling_aet)

    def on_stored(self, instance_id: str, origin: str, remote_aet: str,
                  tags: Callable[[], Mapping[str, Any]]) -> None:
        if origin != DICOM_ORIGIN or self.pending.take(instance_id, remote_aet):
            return
        # Orthanc filed an instance the filter never admitted under these identifiers: take it out again.
        # The C-STORE response cannot be changed from here (Orthanc has decided it), so the device may see
        # success; the audit trail records the refusal.
        try:
            indexed: InstanceIds | None = ids_from_tags(tags())
        except Exception:  # the record must still be written
            log.exception("could not read the tags of a mis-indexed instance (Orthanc ID %r)", instance_id)
            indexed = None
        reason = MISMATCH_REASON
        try:
            self._orthanc.delete(f"/instances/{instance_id}")
        except Exception:
            log.exception("could not remove a mis-indexed instance (Orthanc ID %r)", instance_id)
            reason += "; removing it failed"
        clinic = self._clinic_of(remote_aet)
        log.warning("C-STORE from %r: Orthanc indexed an instance otherwise than admitted; removed", remote_aet)
        self._on_event("indexed-identifiers-mismatch", {
            "clinic": clinic, "source": f"dicom:{remote_aet}", "reason": reason,
            "study_uid": indexed.study_uid if indexed else "", "sop_uid": indexed.sop_uid if indexed else "",
            "indexed_orthanc_id": instance_id,
        })
        self._audit.stored(remote_aet, clinic, indexed, status_codes.REFUSED_NOT_AUTHORIZED, reason)
