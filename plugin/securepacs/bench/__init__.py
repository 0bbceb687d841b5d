"""Ingest benchmark: starts each archive configuration itself, sends the same data, writes a report.

``securepacs bench`` (and ``scripts/bench``) drive :func:`securepacs.bench.runner.run`; the pieces are
``configs`` (start/stop the five configurations a-e), ``runner`` (cells, interleaved timing, statistics),
``report`` (Markdown + PNG plots) and ``machine`` (what it ran on).
"""
