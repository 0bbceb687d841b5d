"""Ingest benchmark: starts each archive configuration itself, sends the same data, writes a report.

``securepacs bench`` (and ``scripts/bench``) drive :func:`securepacs_tools.bench.runner.run`. The pieces:
``specs`` (the configurations a-f, import-light), ``common``/``processes`` (credentials, a started
configuration, /proc accounting), ``configs``/``fullstack`` (start and stop them), ``plan`` (which cells),
``clients`` (storescu and our client, one timed run), ``probes`` (handshakes, association set-up, the
gateway's many-association memory run), ``model`` (results and statistics), ``report``/``gateway_report``/
``platform_report``/``fmt`` (Markdown + PNG plots), ``machine`` (what it ran on) and ``image`` (the same
configurations in a container of the image: the platform axis, native Orthanc vs the image's).

Owns the benchmark's stacks, runs and report; nothing here ships in the image.
May import ``securepacs`` (any layer) and ``securepacs_tools.synth``.
"""
