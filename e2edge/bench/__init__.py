"""Benchmarks: each writes its numbers as JSON and compares against a baseline in the same run."""
