"""Benchmarks (DESIGN.md, "Testing"): ratios against a baseline measured in the same run.

Run from the repository root, e.g. `python -m bench.ingest`. Not part of the test gate.
"""
