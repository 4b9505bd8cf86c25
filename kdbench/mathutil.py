"""Small numeric helpers shared by runners and reports (a neutral module: it imports neither)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def geomean(values: ArrayLike) -> float:
    """Geometric mean of non-negative numbers: 0 when any is 0 (its log would be -inf), nan for none given."""
    x = np.asarray(values, dtype=float)
    return 0.0 if (x == 0).any() else float(np.exp(np.log(x).mean()))
