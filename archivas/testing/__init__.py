"""Helpers for tests and benchmarks: test plots and a fast valid-chain builder."""
