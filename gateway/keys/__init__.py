"""The key table: records, the Redis layout, the per-worker cache, usage, lifecycle service."""
