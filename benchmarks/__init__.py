"""Benchmarks that anyone can rerun: retrieval quality against peers (quality.py) and baselines (baselines.py)."""
