"""Benchmark scripts (run as modules: python -m benchmarks.<name>); results in benchmarks/results/."""
