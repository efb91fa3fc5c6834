"""Property-based tests (hypothesis) for the pure parsers, and the replay of fuzz findings."""
