"""Benchmarks: `python -m bench` (issue #6)."""
