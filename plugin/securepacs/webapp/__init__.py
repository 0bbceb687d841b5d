"""The physicians' web app: login, the clinic's study list, a study page and a server-rendered viewer.

Why it exists: a physician on a phone over a slow link must read a 300-slice CT without downloading it.
The server renders each frame from the stored pixels at the viewport's size with the requested
window/level (``windowing`` holds the math, ``render`` the decode/encode/cache), so the browser only
receives small JPEGs (PNG when asked for lossless).

What it guarantees:

- Pages are static shells (``static/``) with no patient data; all PHI travels over same-origin XHR with
  the session cookie, under a strict Content-Security-Policy (no inline script, no eval), frame-ancestors
  none, no referrer, and ``Cache-Control: private`` (rendered images) / ``no-store`` (JSON).
- URLs carry opaque Orthanc IDs only. Every data request is tenant-checked by the archive's HTTP policy (the
  patterns live in ``urls``, which imports nothing so the policy and the HTTP filter can use it).
- Opening a study in the viewer is audited once (DICOM Instances Accessed), not once per frame.

Owns: ``/``, ``/login``, ``/list``, ``/study/<id>``, ``/view/<id>``, ``/assets/<file>`` and
``/securepacs/api/viewer/...``. May import: ``web``, ``access``, ``tenancy``, ``audit``, ``dicom``,
``config``; never ``orthanc`` (the app hands in Orthanc's REST API).
"""
