"""Helpers shared by the service, e2e and reliability tests and the benchmarks (live server, test images)."""
