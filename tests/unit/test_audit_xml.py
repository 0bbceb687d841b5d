"""DICOM audit messages: validated against the PS3.15 A.5.1 schema shipped in tests/data/audit, and the export."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

# Test dependencies (pyproject's "test" extra): lxml validates against the DICOM RELAX NG schema, rnc2rng
# proves the shipped .rng is the standard's compact schema converted.
import rnc2rng
from lxml import etree
from test_audit_record import ALICE, SOURCE, sample_records

from securepacs.audit import (
    ActiveParticipant,
    AuditRecord,
    AuditTrail,
    audit_message,
    codes,
    create_checkpoint_key,
    events,
    export_messages,
    iter_entries,
    to_xml,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "audit"


@pytest.fixture(scope="module")
def schema():
    return etree.RelaxNG(etree.parse(str(DATA / "audit-message.rng")))


def assert_valid(schema, document: bytes) -> etree._Element:
    root = etree.fromstring(document)
    assert schema.validate(root), schema.error_log.last_error
    return root


def test_shipped_rng_is_the_standard_rnc_converted() -> None:
    # The standard puts "##" annotations after choices, which rnc2rng's parser refuses; read them as comments.
    text = (DATA / "audit-message.rnc").read_text().replace("##", "#")
    converted = rnc2rng.dumps(rnc2rng.loads(text))
    shipped = "".join(line for line in (DATA / "audit-message.rng").read_text().splitlines(True)
                      if not line.startswith("<!--"))
    assert shipped == converted


@pytest.mark.parametrize("record", sample_records(), ids=lambda r: f"{r.name}-{r.action}-{r.outcome}")
def test_every_event_validates_against_the_schema(schema, record: AuditRecord) -> None:
    root = assert_valid(schema, to_xml(record))
    assert root.find("EventIdentification/EventID").get("csd-code") == record.event.code
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == str(record.outcome)


def test_schema_is_strict_about_order(schema) -> None:
    root = audit_message(sample_records()[3])
    source = root.find("AuditSourceIdentification")
    root.remove(source)
    root.insert(0, source)
    assert not schema.validate(etree.fromstring(ET.tostring(root)))


def test_element_order_and_mapping() -> None:
    record = events.instances_accessed(
        SOURCE, ALICE, [events.study("1.2.3", {"1.2.840.10008.5.1.4.1.1.2": 4}, ["A1"])],
        events.patient("PID-7", "Doe^Jane"), details={"via": "dicomweb"},
    )
    root = etree.fromstring(to_xml(record))
    assert [c.tag for c in root] == [
        "EventIdentification", "ActiveParticipant", "AuditSourceIdentification",
        "ParticipantObjectIdentification", "ParticipantObjectIdentification", "ParticipantObjectIdentification",
    ]
    participant = root.find("ActiveParticipant")
    assert participant.get("AlternativeUserID") == "AETITLES=MOD1"
    access_point = (participant.get("NetworkAccessPointID"), participant.get("NetworkAccessPointTypeCode"))
    assert access_point == ("192.0.2.7", "2")
    study, patient, identity = root.findall("ParticipantObjectIdentification")
    assert [c.tag for c in study] == [
        "ParticipantObjectIDTypeCode", "ParticipantObjectName", "ParticipantObjectDetail",
        "ParticipantObjectDescription",
    ]
    assert study.find("ParticipantObjectDetail").get("type") == "via"
    description = study.find("ParticipantObjectDescription")
    assert [c.tag for c in description] == ["Accession", "SOPClass"]
    assert description.find("SOPClass").get("NumberOfInstances") == "4"
    assert (patient.get("ParticipantObjectID"), patient.findtext("ParticipantObjectName")) == ("PID-7", "Doe^Jane")
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert identity.findtext("ParticipantObjectName") == "clinic-a"
    assert {d.get("type") for d in identity.findall("ParticipantObjectDetail")} == {"Clinic", "CertificateSHA256"}


def test_query_is_base64_and_host_names_are_type_1(schema) -> None:
    query = sample_records()[7]
    root = assert_valid(schema, to_xml(query))
    assert root.findtext("ParticipantObjectIdentification/ParticipantObjectQuery") == "EAAgAFBBVC0qAA=="
    archive = root.findall("ActiveParticipant")[1]
    assert archive.get("NetworkAccessPointTypeCode") == "1"


def test_hostile_text_stays_one_valid_line(schema) -> None:
    nasty = replace(
        sample_records()[10],
        outcome_description='line1\nline2 <script> & "quotes" \x01\x1b',
        participants=(ActiveParticipant("x\ny", user_name="]]>"),),
    )
    document = to_xml(nasty)
    assert b"\n" not in document
    root = assert_valid(schema, document)
    description = root.findtext("EventIdentification/EventOutcomeDescription")
    assert description == 'line1\nline2 <script> & "quotes" \ufffd\ufffd'
    assert root.find("ActiveParticipant").get("UserID") == "x\ny"


def test_details_without_objects_go_to_the_outcome_description(schema) -> None:
    record = events.application_activity(SOURCE, ActiveParticipant("app"), started=True, details={"version": "1.0"})
    root = assert_valid(schema, to_xml(record))
    assert root.findtext("EventIdentification/EventOutcomeDescription") == "version=1.0"
    assert root.find("ParticipantObjectIdentification") is None


def test_export_streams_one_message_per_record(schema, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "checkpoint.key"
    create_checkpoint_key(key)
    trail_path = tmp_path / "audit" / "trail.jsonl"
    with AuditTrail(trail_path, source=SOURCE, signing_key=key) as trail:
        trail.append_many(sample_records())
    entries = list(iter_entries(trail_path))
    assert entries[-1].is_checkpoint

    out = io.BytesIO()
    assert export_messages(entries, out, "xml") == len(entries) - 1
    documents = out.getvalue().splitlines()
    assert len(documents) == len(entries) - 1
    for document in documents:
        assert_valid(schema, document)

    out = io.BytesIO()
    export_messages(entries, out, "jsonl")
    first = json.loads(out.getvalue().splitlines()[1])
    assert (first["seq"], first["hash"]) == (2, entries[1].hash)
    assert AuditRecord.from_dict(first["record"]) == entries[1].record()

    with pytest.raises(ValueError, match="unknown audit export format"):
        export_messages(entries, io.BytesIO(), "csv")


def test_codes_in_messages_are_dcm(schema) -> None:
    record = events.security_alert(SOURCE, codes.USE_OF_RESTRICTED_FUNCTION, ALICE, [events.user_account("bob")])
    root = assert_valid(schema, to_xml(record))
    event_type = root.find("EventIdentification/EventTypeCode")
    assert (event_type.get("csd-code"), event_type.get("codeSystemName"), event_type.get("originalText")) == (
        "110132", "DCM", "Use of Restricted Function",
    )
