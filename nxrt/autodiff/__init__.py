"""Reverse-mode differentiation of ONNX graphs into standard ONNX ops (rule table + traversal)."""

from .grad import add_gradients, check_supported, rule_table
from .rules import RULES, ZERO_GRAD_OPS, vjp

__all__ = ["RULES", "ZERO_GRAD_OPS", "add_gradients", "check_supported", "rule_table", "vjp"]
