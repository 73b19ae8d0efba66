"""Benchmarks: ``python -m bench SCENARIO`` (README, "Performance"). Never run as timed tests."""
