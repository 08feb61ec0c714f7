"""relreward: extract relative reward functions from pairs of trajectory diffusion models."""

__version__ = "0.1.0"
