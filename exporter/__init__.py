"""Workstation side of e2edge: training, pruning, evaluation and export (needs torch)."""
