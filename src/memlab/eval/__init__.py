"""Evaluation tasks and their figures (heatmaps, curves), shared by training callbacks and scripts/eval.py."""
