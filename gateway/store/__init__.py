"""The Redis boundary: connecting (embedded or external) and translating Redis errors."""
