"""Evaluation: metrics (one implementation), protocols, uncertainty metrics, the loop, reports, plots.

Import from the submodules, e.g. ``from kd_depth_core.eval.metrics import compute_depth_metrics``.
"""
