"""binexp: config-driven experiments with binary neural networks."""

__version__ = "0.1.0"
