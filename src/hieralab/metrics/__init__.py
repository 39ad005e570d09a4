"""Metrics: pure functions of predictions and ground truth."""
