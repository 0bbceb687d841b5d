"""nginx's error lines lose their query strings (patient data in QIDO searches), nothing else."""

from __future__ import annotations

import io
import os

from securepacs.ops import nginx_log

TOO_LARGE = (b'2026/12/03 13:35:40 [error] 13607#13607: *459 client intended to send too large body: 600000000 bytes, '
             b'client: 127.0.0.1, server: _, request: "POST /dicom-web/studies?PatientID=CANARY1&PatientName=DOE^JANE '
             b'HTTP/1.1", host: "localhost"\n')
UPSTREAM = (b'2026/12/03 13:40:00 [error] 1#1: *7 connect() failed (111: Connection refused) while connecting to '
            b'upstream, client: 127.0.0.1, server: _, request: "GET /dicom-web/studies?PatientBirthDate=19700101 '
            b'HTTP/1.1", upstream: "http://127.0.0.1:8042/securepacs/dicom-web/studies?PatientBirthDate=19700101", '
            b'host: "archive:8443", referrer: "https://archive:8443/securepacs/?q=DOE"\n')


def test_query_strings_are_removed_from_request_upstream_and_referrer() -> None:
    for line in (TOO_LARGE, UPSTREAM):
        out = nginx_log.redact(line)
        for secret in (b"CANARY1", b"DOE", b"JANE", b"19700101", b"PatientID="):
            assert secret not in out, out
        assert out.endswith(b"\n") and b"?[query removed]" in out
    assert b'request: "POST /dicom-web/studies?[query removed] HTTP/1.1", host: "localhost"' in nginx_log.redact(
        TOO_LARGE)
    assert b'upstream: "http://127.0.0.1:8042/securepacs/dicom-web/studies?[query removed]"' in nginx_log.redact(
        UPSTREAM)


def test_lines_without_a_query_pass_unchanged() -> None:
    line = b'2026/12/03 13:00:00 [warn] 1#1: the "user" directive makes sense only if the master process runs\n'
    assert nginx_log.redact(line) == line


def test_forward_copies_every_line_redacted_until_the_pipe_closes() -> None:
    read_end, write_end = os.pipe()
    sink = io.BytesIO()
    sink.close = lambda: None  # keep the buffer readable after the pump ends
    with os.fdopen(read_end, "rb") as source:
        thread = nginx_log.forward(source, sink)
        with os.fdopen(write_end, "wb") as nginx:
            nginx.write(TOO_LARGE + b"plain line\n")
        thread.join(10)
    assert not thread.is_alive()
    assert sink.getvalue() == nginx_log.redact(TOO_LARGE) + b"plain line\n"
