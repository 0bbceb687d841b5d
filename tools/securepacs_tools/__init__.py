"""Development tools, not shipped in the archive: the benchmark harness and generated test data.

Owns ``synth`` (synthetic studies with pydicom, no real patients), ``nested_samples`` (deeply nested data
sets for the CVE-2026-10528 checks) and ``bench`` (the stacks, runs and report of ``securepacs bench``).

May import ``securepacs`` (any layer). Imported by ``securepacs`` only in ``securepacs.cli.bench_cmd``, lazily.
"""
