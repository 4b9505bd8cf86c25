"""kdbench: knowledge-distillation benchmark for 6-DoF camera pose regression."""

__version__ = "0.3.0"

from kdbench.errors import KdbenchError

__all__ = ["KdbenchError", "__version__"]
