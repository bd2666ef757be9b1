"""Benchmarks: per-stage latency, memory and throughput of every backend and precision, beside PyTorch."""
