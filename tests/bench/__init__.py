"""Benchmarks: each `bench_<area>.py` has `run() -> str` returning a markdown section. Run by `make bench`."""
