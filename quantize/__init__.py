"""quantize (arrives with its issue)."""
