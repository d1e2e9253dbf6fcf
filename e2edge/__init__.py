"""e2edge: energy-efficient edge AI for NVIDIA Jetson."""

__version__ = "0.1.0"
