"""bench (arrives with its issue)."""
