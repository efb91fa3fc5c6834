"""API authentication gateway."""
