"""Benchmarks behind ``escm2-bench``: the harness, training runs, the report."""
