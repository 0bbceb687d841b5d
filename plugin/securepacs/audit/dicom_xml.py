"""Audit records as DICOM audit messages (PS3.15 A.5.1 schema, A.5.3 conventions) and a streaming export.

Element order is the schema's: EventIdentification, ActiveParticipant+, AuditSourceIdentification,
ParticipantObjectIdentification*; inside those, coded children come in the order the RELAX NG groups
list them (attributes are unordered in XML).

Mapping choices the schema leaves open:
* an AE title goes to AlternativeUserID as "AETITLES=<aet>" (PS3.15 A.5.2.2);
* a participant's clinic and certificate fingerprint have no attribute in ActiveParticipant, so they
  are reported as a ParticipantObjectIdentification (Security User Entity, User Identifier) with
  ParticipantObjectDetail "Clinic" / "CertificateSHA256";
* the schema needs ParticipantObjectName or ParticipantObjectQuery: without either the ID is repeated
  as the name;
* the record's free details become ParticipantObjectDetail of the first participant object, or lines
  of EventOutcomeDescription when there is none.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import BinaryIO

from securepacs.audit import codes
from securepacs.audit.chain import TrailEntry
from securepacs.audit.codes import Code
from securepacs.audit.record import ActiveParticipant, AuditRecord, ParticipantObject, canonical_json

_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
EXPORT_FORMATS = ("xml", "jsonl")


def _text(value: str) -> str:
    """XML 1.0 cannot carry most control characters, not even escaped: replace them visibly."""
    return _XML_INVALID.sub("\ufffd", value)


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": _text(code.meaning)}
    )


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode("ascii")


def _access_point_type(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "1"  # machine name
    return "2"  # IP address


def _participant(parent: ET.Element, p: ActiveParticipant) -> None:
    attrs = {"UserID": _text(p.user_id), "UserIsRequestor": "true" if p.is_requestor else "false"}
    if p.ae_title:
        attrs["AlternativeUserID"] = _text(f"AETITLES={p.ae_title}")
    if p.user_name:
        attrs["UserName"] = _text(p.user_name)
    if p.network_access_point:
        attrs["NetworkAccessPointID"] = _text(p.network_access_point)
        attrs["NetworkAccessPointTypeCode"] = _access_point_type(p.network_access_point)
    element = ET.SubElement(parent, "ActiveParticipant", attrs)
    for role in p.roles:
        _coded(element, "RoleIDCode", role)


def _identity_object(p: ActiveParticipant) -> ParticipantObject | None:
    details = {k: v for k, v in (("Clinic", p.clinic), ("CertificateSHA256", p.cert_sha256)) if v}
    if not details:
        return None
    return ParticipantObject(
        p.user_id, codes.ID_USER_IDENTIFIER, type_code=codes.TYPE_SYSTEM_OBJECT, role=codes.ROLE_SECURITY_USER_ENTITY,
        name=p.clinic or p.user_id, details=tuple(details.items()),
    )


def _object(parent: ET.Element, o: ParticipantObject, extra: tuple[tuple[str, str], ...] = ()) -> None:
    attrs = {"ParticipantObjectID": _text(o.object_id)}
    for name, value in (
        ("ParticipantObjectTypeCode", o.type_code),
        ("ParticipantObjectTypeCodeRole", o.role),
        ("ParticipantObjectDataLifeCycle", o.life_cycle),
        ("ParticipantObjectSensitivity", o.sensitivity),
    ):
        if value is not None:
            attrs[name] = _text(str(value))
    element = ET.SubElement(parent, "ParticipantObjectIdentification", attrs)
    _coded(element, "ParticipantObjectIDTypeCode", o.id_type)
    if o.query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = _b64(o.query)
    else:
        ET.SubElement(element, "ParticipantObjectName").text = _text(o.name or o.object_id)
    for key, value in (*o.details, *extra):
        ET.SubElement(element, "ParticipantObjectDetail", {"type": _text(key), "value": _b64(value)})
    if o.accessions or o.sop_classes or o.encrypted is not None or o.anonymized is not None:
        description = ET.SubElement(element, "ParticipantObjectDescription")
        for accession in o.accessions:
            ET.SubElement(description, "Accession", {"Number": _text(accession)})
        for sop in o.sop_classes:
            ET.SubElement(description, "SOPClass", {"UID": _text(sop.uid), "NumberOfInstances": str(sop.count)})
        for tag, flag in (("Encrypted", o.encrypted), ("Anonymized", o.anonymized)):
            if flag is not None:
                ET.SubElement(description, tag).text = "true" if flag else "false"


def audit_message(record: AuditRecord) -> ET.Element:
    """The ``<AuditMessage>`` element for one record."""
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": record.action,
        "EventDateTime": record.time,
        "EventOutcomeIndicator": str(record.outcome),
    })
    _coded(event, "EventID", record.event)
    for event_type in record.event_types:
        _coded(event, "EventTypeCode", event_type)
    objects = [o for o in (_identity_object(p) for p in record.participants) if o is not None]
    objects = [*record.objects, *objects]
    description = [record.outcome_description] if record.outcome_description else []
    if record.details and not objects:
        description.extend(f"{k}={v}" for k, v in record.details)
    if description:
        ET.SubElement(event, "EventOutcomeDescription").text = _text("\n".join(description))
    for participant in record.participants:
        _participant(root, participant)
    source_attrs = {"AuditSourceID": _text(record.source.source_id)}
    if record.source.site:
        source_attrs["AuditEnterpriseSiteID"] = _text(record.source.site)
    source = ET.SubElement(root, "AuditSourceIdentification", source_attrs)
    for source_type in record.source.types:
        ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": _text(source_type)})
    for index, obj in enumerate(objects):
        _object(root, obj, record.details if index == 0 else ())
    return root


def to_xml(record: AuditRecord) -> bytes:
    """One standalone UTF-8 XML document on a single line (literal CR/LF become character references)."""
    body = ET.tostring(audit_message(record), encoding="unicode")
    body = body.replace("\r", "&#13;").replace("\n", "&#10;")  # equivalent for a parser, keeps one line
    return b'<?xml version="1.0" encoding="UTF-8"?>' + body.encode("utf-8")


def export_messages(entries: Iterable[TrailEntry], out: BinaryIO, fmt: str = "xml") -> int:
    """Write one message per line for each record entry (checkpoints are skipped); return the count.

    ``xml``: one DICOM audit message document per line. ``jsonl``: {"hash", "record", "seq"} per line,
    so an export can be matched against the trail and the collector's copy.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown audit export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    count = 0
    for entry in entries:
        if entry.is_checkpoint:
            continue
        if fmt == "xml":
            out.write(to_xml(entry.record()) + b"\n")
        else:
            out.write(canonical_json({"hash": entry.hash, "record": entry.body, "seq": entry.seq}) + b"\n")
        count += 1
    return count
