"""Benchmarks: sampling throughput per backend, unlearning seconds per iteration."""
