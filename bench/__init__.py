"""Benchmarks: each script prints its tables and writes them into docs/benchmarks.md (python -m bench.NAME)."""
