"""Range checks of hyperparameters beyond their types (the errors name the value and the valid range)."""

from __future__ import annotations

from kdbench.errors import KdbenchError


def check_unit(where: str, value: float) -> None:
    """A weight that must lie in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise KdbenchError(f"{where} = {value} must lie in [0, 1]")


def check_nonnegative(where: str, value: float) -> None:
    """A loss weight that must not be negative."""
    if value < 0:
        raise KdbenchError(f"{where} = {value} must be >= 0")


def check_count(where: str, layers: tuple[str, ...], lo: int, hi: int | None = None) -> None:
    """A layer list whose length must lie in [lo, hi]."""
    if len(layers) < lo or (hi is not None and len(layers) > hi):
        want = f"exactly {lo}" if hi == lo else f"at least {lo}"
        raise KdbenchError(f"{where} = {','.join(layers) or '(empty)'}: give {want} layer(s)")
