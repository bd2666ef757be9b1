"""instantid-edge: InstantID on commodity CPUs, with a runtime that needs no PyTorch."""

__version__ = "0.1.0"
