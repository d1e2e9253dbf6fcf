"""Jetson side of e2edge. Must never import torch or transformers."""
