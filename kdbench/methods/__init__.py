"""Distillation methods: the registry and one module per built-in method."""

from kdbench.methods.base import GroundTruth, HParam, LossContext, Method, PoseLoss
from kdbench.methods.registry import (
    available_methods,
    create_method,
    get_method,
    load_plugin,
    parse_set_args,
    register_method,
    resolved_params,
)
from kdbench.methods import baseline  # noqa: E402,F401  (built-ins register on import)

__all__ = [
    "GroundTruth", "HParam", "LossContext", "Method", "PoseLoss", "available_methods", "create_method",
    "get_method", "load_plugin", "parse_set_args", "register_method", "resolved_params",
]
