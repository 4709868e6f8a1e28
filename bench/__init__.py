"""Benchmarks: `python -m bench` (throughput against a floor), `python -m bench.chaos`.

`main(argv)` is what `python -m bench` calls; it imports the suite lazily, so
importing `bench` (as bench.chaos does) stays cheap.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the throughput benchmark (see bench/suite.py); 0 when every figure was measured."""
    from bench.suite import main as suite_main

    return suite_main(argv)
