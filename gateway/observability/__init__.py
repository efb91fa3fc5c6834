"""Metrics and access logs (SPEC §9)."""
