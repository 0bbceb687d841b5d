"""Audit trail: every access recorded, tamper-evident, exportable as DICOM audit messages, forwarded over syslog TLS.

Serves HIPAA 164.312(b) (audit controls), IHE ATNA and DICOM PS3.15 Annex A.5. Nothing here imports
Orthanc: the plugin, the gateway and the CLI all write through :class:`AuditTrail`.

Records
    :class:`AuditRecord` (frozen dataclasses, ``to_dict``/``from_dict``) mirrors the DICOM audit
    message: event ID and type codes from PS3.16 CID 400-403 (:mod:`.codes`), action C/R/U/D/E,
    outcome 0/4/8/12, UTC time ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, active participants (user id, clinic,
    AE title, certificate SHA-256, requestor flag, source IP), participant objects (patient, study
    with per-SOP-class counts, query bytes, audit log, ...) and free ``details``. :mod:`.events` builds
    the events PS3.15 A.5.3 specialises with the roles and codes it prescribes. JSON is canonical:
    sorted keys, no whitespace, UTF-8.

File format (``<data>/audit/trail.jsonl``, see :mod:`.chain`)
    One canonical JSON object per line, LF-terminated:
    ``{"body": {...}, "hash": h, "kind": "record"|"checkpoint", "prev": p, "seq": n}``.
    seq counts lines from 1. Chain rule: ``hash = hex SHA-256(prev as 64 ASCII hex digits ||
    canonical_json({"body", "kind", "seq"}))`` and ``prev`` is the previous line's hash, 64 zeros for
    seq 1. The first entry of a new trail is a Security Alert "Audit Recording Started" record.

Writers and the crash window
    Any number of processes may append (plugin, gateway, CLI). Each append takes ``flock(LOCK_EX)``
    on the file; if the size is not what this process left, it re-reads the last line for seq/hash.
    An append is ONE ``write()`` of the whole line(s) with O_APPEND. When ``append`` returns, the line
    is in the kernel page cache: killing the process (even kill -9) loses nothing that was returned.
    fsync (fdatasync) is batched: a background thread syncs at most ``fsync_interval`` seconds
    (default 0.2 s) after an append, and ``close`` syncs; ``append(..., durable=True)`` syncs before
    returning. So a power loss or kernel crash can lose the entries appended within the last
    ``fsync_interval`` seconds (plus the sync in flight), never anything older.
    A crash can leave a torn last line (no LF, or unparsable). Opening the trail for writing (or the
    next append of another process) moves those bytes to ``trail.jsonl.torn-<time>-<pid>-<offset>``,
    truncates, and appends a Security Alert "Audit Recording Started" record with outcome 4 saying so;
    the chain then verifies again. A last line that parses but has a wrong hash is NOT touched: that is
    tampering, for verify() to report.

The signer (:mod:`.signer`, :mod:`.checkpoints`) -- how the trail is sealed as shipped
    No writer holds the key: a compromised writer could otherwise rewrite the trail, recompute every
    hash and re-sign it. A separate process under its own uid (``securepacs-audit``) owns the key
    (0600), reads the trail only, checks each new line's chain as it is appended, and every few seconds
    (and at stop) appends a signed attestation (seq, hash) to ``checkpoints.jsonl`` beside the key, a
    file the writers cannot write. verify() requires the trail to match every attestation; when the
    trail stops extending what the signer saw, the signer writes a signed "diverged" line for good.

In-trail checkpoints (older trails; writers given a key)
    With a signing key, a checkpoint entry is appended every ``checkpoint_every`` records (1000), every
    ``checkpoint_interval`` seconds (60) if anything new was written, and on close. Its body holds
    ``covers_seq``/``covers_hash`` (the previous entry), the time, the reason, the key id and an Ed25519
    signature over all of that. The private key lives OUTSIDE the trail directory (for example
    ``certs/audit/checkpoint.key``, 0600, see :func:`create_checkpoint_key`); verifiers need only the
    public key. Writers opened without a key still append and chain; checkpoints then come from the
    writers that have one: a keyed writer's timer checkpoints whatever anyone appended, and its count
    includes the others' records it sees at its own appends. Several keyed writers may checkpoint
    more often than the defaults. Time checkpoints need the writer to be open (a background thread).

What verify() detects
    With the signer's attestations: a trail rewritten and rehashed before the last attestation, a tail
    cut behind it, and any divergence the signer recorded. Without them (file alone): the first bad
    line, for: an edited line (hash or canonical form), a deleted, inserted or moved
    line (seq/prev), a torn last line, a forged or altered checkpoint (signature), and a chain
    recomputed after an edit (the next checkpoint no longer covers it). It cannot detect, from the
    file alone, entries removed after the last checkpoint, or a tail cut back to a checkpoint. Those
    are caught by comparing with the forwarded copy or by passing ``anchor=(seq, hash)`` (e.g. the
    forwarder's cursor). Run a checkpoint often enough, and forward, to keep that window small.

Forwarding and the delivery rule (:mod:`.syslog`)
    RFC 5424 messages (facility authpriv, severity from the outcome, MSGID = event name, structured
    data ``[securepacs@32473 seq prev hash]``, MSG = BOM + trail line or DICOM XML) in RFC 5425
    octet-counting frames over mutual TLS >= 1.2. The trail is the backlog and a cursor file holds the
    last delivered (seq, hash, offset). A batch counts as delivered once the peer's TCP acknowledged
    every byte (SIOCOUTQ = 0) and the connection then stayed open for ``grace`` seconds; otherwise the
    connection is dropped and everything after the cursor is resent in order (at-least-once; dedupe
    by seq). If the trail no longer holds the delivered (seq, hash), everything is resent from seq 1.

Room left for later
    Rotation into segments: a segment would end with a checkpoint and the next segment would start
    with prev = that checkpoint's hash and continue seq, so the chain and verify() extend across
    files; the forwarder's cursor would then also name the segment. Not implemented.

Owns the trail file, its chain, the signer, verification, export and forwarding, and the trail's REST API.
May import: ``access``, ``pki``, ``store``, ``config``, ``dicom``, ``web``. Imported by tenancy and above.
"""

from __future__ import annotations

from securepacs.audit import codes, events
from securepacs.audit.chain import GENESIS, LineError, TrailEntry, iter_entries, last_entry
from securepacs.audit.codes import Code
from securepacs.audit.dicom_xml import audit_message, export_messages, to_xml
from securepacs.audit.keys import (
    CheckpointKeyError,
    create_checkpoint_key,
    load_checkpoint_private_key,
    load_checkpoint_public_key,
    public_key_path,
)
from securepacs.audit.record import (
    ActiveParticipant,
    AuditRecord,
    AuditSource,
    ParticipantObject,
    SopClassCount,
    canonical_json,
    format_time,
    utc_now,
)
from securepacs.audit.rfc5424 import format_message, frame, split_frames
from securepacs.audit.search import Filters, search, search_entries
from securepacs.audit.syslog import Cursor, ForwardingError, SyslogForwarder, client_context
from securepacs.audit.trail import AuditTrail, default_trail_path
from securepacs.audit.verify import Problem, VerifyReport, verify

__all__ = [
    "GENESIS",
    "ActiveParticipant",
    "AuditRecord",
    "AuditSource",
    "AuditTrail",
    "CheckpointKeyError",
    "Code",
    "Cursor",
    "Filters",
    "ForwardingError",
    "LineError",
    "ParticipantObject",
    "Problem",
    "SopClassCount",
    "SyslogForwarder",
    "TrailEntry",
    "VerifyReport",
    "audit_message",
    "canonical_json",
    "client_context",
    "codes",
    "create_checkpoint_key",
    "default_trail_path",
    "events",
    "export_messages",
    "format_message",
    "format_time",
    "frame",
    "iter_entries",
    "last_entry",
    "load_checkpoint_private_key",
    "load_checkpoint_public_key",
    "public_key_path",
    "search",
    "search_entries",
    "split_frames",
    "to_xml",
    "utc_now",
    "verify",
]
