"""Baselines measured beside the gateway in the same run."""
