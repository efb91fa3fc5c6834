"""Credentials: parsing and checking them (pure), and the decision that follows."""
