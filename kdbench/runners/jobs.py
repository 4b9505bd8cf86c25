"""Running one planned job, in this process or in a Ray worker; the result goes back to the driver."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.runners.plan import Job
from kdbench.runners.train import CHECKPOINT


def teacher_checkpoint(runs_dir: str | os.PathLike, teacher: Job) -> Path:
    """Where a teacher job's checkpoint lives."""
    return Path(runs_dir) / teacher.run_dir / CHECKPOINT


def run_job(job: Job, runs_dir: str | os.PathLike, data_root: str | os.PathLike | None,
            teacher_ckpt: str | os.PathLike | None = None, plugins: tuple[str, ...] = (),
            on_epoch: Callable[[int, int, float], None] | None = None, device: str | None = None,
            checkpoint_every: float | None = None, data_share: float | None = None) -> dict[str, Any]:
    """Train and evaluate one job; never raises for a failed job (the driver records the error).

    Torch's CPU threads are the job's `cfg.threads` (runners/train.py); `checkpoint_every` is in seconds;
    `data_share` is this job's share of GPU memory for device-resident data (its GPU's share / jobs on it).
    """
    from kdbench.methods import load_plugin
    from kdbench.runners.checkpoints import DEFAULT_EVERY_S
    from kdbench.runners.environment import environment
    from kdbench.runners.train import train

    result: dict[str, Any] = {"id": job.id, "run_dir": job.run_dir}
    try:
        for path in plugins:
            load_plugin(path)
        res = train(job.cfg, data_root, Path(runs_dir) / job.run_dir, teacher_ckpt, quiet=True,
                    on_epoch=on_epoch, device=device,
                    checkpoint_every=DEFAULT_EVERY_S if checkpoint_every is None else checkpoint_every,
                    data_share=data_share)
        result.update(status="done", metrics=res.metrics, epochs_done=res.epochs_done,
                      resumed_from=res.resumed_from,
                      skipped_steps=res.skipped_steps, device=device,
                      train_seconds=res.train_seconds, eval_seconds=res.eval_seconds,
                      checkpoint=os.path.join(job.run_dir, CHECKPOINT), config=res.config.to_dict())
    except KdbenchError as exc:
        result.update(status="failed", error=str(exc))
    except Exception as exc:  # a plugin's bug must not stop the other jobs; keep where it happened
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        result.update(status="failed", error=f"{type(exc).__name__}: {exc} (at {tb.filename}:{tb.lineno})")
    result["env"] = environment(device)
    return result
