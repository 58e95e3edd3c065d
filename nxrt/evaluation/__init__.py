"""Quantitative evaluation of explanations in 2D and 3D: metric plugins (entry-point group
`nxrt.metrics`, built-ins in plugins/metrics_*.py) and `evaluate`, which runs them batched on the
model's own sessions."""

from .evaluate import EvaluationContext, evaluate
from .metric import Metric, get_metric, metrics, prepared, spatial_map

__all__ = ["EvaluationContext", "Metric", "evaluate", "get_metric", "metrics", "prepared", "spatial_map"]
