"""Metrics, accuracy against the float reference, latency and the report."""
