"""Anomaly-detection methods: each a class with fit/score (higher score = more anomalous)."""

from methods.base import TrainSet
from methods.registry import METHODS, get_method

__all__ = ["METHODS", "TrainSet", "get_method"]
