"""Benchmarks: a synthetic city at scale k through the real pipeline, measured against baselines in the same run.

`python -m bench` runs everything and writes `bench/results/latest.json`; see bench/README.md.
"""
