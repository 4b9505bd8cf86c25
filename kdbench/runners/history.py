"""Per-epoch training history: `history.csv` beside the checkpoint, and TensorBoard event files when available.

A row holds the epoch, the mean of every loss term (`loss_<term>`, the KD terms too) and of their sum
(`loss`), the learning rate, the epoch's seconds, its optimiser steps and the steps fp16 loss scaling skipped.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from kdbench.fileio import write_text_atomic

HISTORY = "history.csv"
TENSORBOARD = "tensorboard"


def history_csv(history: list[dict[str, Any]]) -> str:
    """The rows as CSV; columns are the union of the rows' keys (a method may add terms), in first-seen order."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


class HistoryLog:
    """Writes history.csv (whole, atomically) and appends each new epoch to TensorBoard."""

    def __init__(self, run_dir: str | os.PathLike, start_epoch: int):
        self.path = Path(run_dir) / HISTORY
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the `tensorboard` extra is optional
            return
        # purge_step: a run resumed from an older checkpoint drops the events of the epochs it redoes.
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD), purge_step=start_epoch + 1)

    def write(self, history: list[dict[str, Any]]) -> None:
        """Rewrite history.csv and log the last row's scalars."""
        write_text_atomic(self.path, history_csv(history))
        if self.writer is not None and history:
            row = history[-1]
            for key, value in row.items():
                if key != "epoch":
                    tag = f"loss/{key[5:]}" if key.startswith("loss_") else ("loss/total" if key == "loss" else key)
                    self.writer.add_scalar(tag, value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        """Close the event file."""
        if self.writer is not None:
            self.writer.close()


class EpochLosses:
    """Running sums of the loss terms on the device, read once per epoch (no host synchronisation per step).

    The first non-finite step is remembered on the device too, so the error can still name it.
    """

    def __init__(self, device: Any, state: dict[str, Any] | None = None):
        import torch

        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        if state:
            self.sums = {k: v.to(device) for k, v in state["sums"].items()}
            self.steps = int(state["steps"])
            self.first_bad = state["first_bad"].to(device)

    def add(self, step: int, loss: Any, terms: dict[str, Any]) -> None:
        """Add one step's loss and terms (device tensors)."""
        import torch

        values = {"loss": loss.detach().float(), **{f"loss_{k}": v.detach().float() for k, v in terms.items()}}
        for key, value in values.items():
            if key in self.sums:
                self.sums[key].add_(value)
            else:
                self.sums[key] = value.clone()
        bad = ~torch.isfinite(values["loss"])
        self.first_bad = torch.where((self.first_bad < 0) & bad, torch.full_like(self.first_bad, step),
                                     self.first_bad)
        self.steps += 1

    def bad_step(self) -> int | None:
        """0-based step of the first non-finite loss in this epoch, or None (synchronises)."""
        step = int(self.first_bad)
        return step if step >= 0 else None

    def means(self) -> dict[str, float]:
        """Mean of every term over the steps added (synchronises once)."""
        import math

        import torch

        if not self.steps:
            return {"loss": math.nan}
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).cpu().tolist()
        return {k: v / self.steps for k, v in zip(keys, values)}

    def state_dict(self) -> dict[str, Any]:
        """What a mid-epoch checkpoint keeps (CPU tensors)."""
        return {"sums": {k: v.cpu() for k, v in self.sums.items()}, "steps": self.steps,
                "first_bad": self.first_bad.cpu()}
