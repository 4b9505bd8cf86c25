"""Distillation methods: the registry and one module per built-in method."""

from kdbench.methods.base import GroundTruth, HParam, LayersMethod, LossContext, Method, PoseLoss
from kdbench.methods.registry import (
    available_methods,
    create_method,
    get_method,
    load_plugin,
    parse_set_args,
    register_method,
    resolved_params,
)

# Built-ins register on import, in the order `kdbench methods` lists them.
# isort: off
from kdbench.methods import baseline, vanilla, attentive, similarity, hint, sckd, rkd, pkt, at  # noqa: F401
# isort: on

__all__ = [
    "GroundTruth", "HParam", "LayersMethod", "LossContext", "Method", "PoseLoss", "available_methods", "create_method",
    "get_method", "load_plugin", "parse_set_args", "register_method", "resolved_params",
]
