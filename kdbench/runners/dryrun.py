"""`kdbench run --dry-run`: the plan a run would execute, with the same reuse check, training nothing.

Nothing is written: the results store is opened read-only (or not at all when there is none), no scene is
rendered or downloaded, no cache is built and no weights are fetched.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kdbench.reports.store import STORE_NAME
from kdbench.runners.benchmark import BenchmarkPlan, is_reusable
from kdbench.scenes.catalog import is_on_disk


def stored_jobs(runs_dir: str | os.PathLike, ids: list[str]) -> dict[str, dict]:
    """The store's rows for these job ids, read through a read-only connection (empty without a store)."""
    path = Path(runs_dir) / STORE_NAME
    if not path.is_file():
        return {}
    # No writer has the store open (no -wal file): read it as immutable, which leaves no -wal/-shm files
    # behind. Otherwise read-only through the WAL, to see what the running writer committed.
    busy = path.with_name(path.name + "-wal").exists()
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro{'' if busy else '&immutable=1'}", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        rows = {}
        for job_id in ids:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row:
                rows[job_id] = dict(row)
        return rows
    finally:
        conn.close()


def print_dry_run(plan: BenchmarkPlan, runs_dir: str | os.PathLike, data_root: str | os.PathLike | None,
                  console: Console | None = None) -> tuple[int, int, int]:
    """Print the jobs (reused or to run) and the images a run would process; returns (to run, reused, images)."""
    out = console or Console(width=160)
    rows = stored_jobs(runs_dir, [j.id for j in plan.jobs])
    table = Table(title=f"kdbench run --dry-run: {len(plan.jobs)} jobs (store {Path(runs_dir) / STORE_NAME})")
    for col in ("#", "kind", "scene", "method", "arch", "seed", "epochs", "id", "status", "images"):
        table.add_column(col, justify="right" if col in ("#", "seed", "epochs", "images") else "left")
    to_run = reused = images = 0
    for i, job in enumerate(plan.jobs, 1):
        c = job.cfg
        if is_reusable(rows.get(job.id)):
            reused += 1
            status, n = "reused", "-"
        else:
            to_run += 1
            images += plan.images(job)
            row = rows.get(job.id)
            status = "to run" + (f" (was {row['status']})" if row and row["status"] != "pending" else "")
            n = f"{plan.images(job):,}"
        seed = str(c.seed) if c.teacher_seed is None else f"{c.seed} (teacher {c.teacher_seed})"  # crossed design
        table.add_row(str(i), job.kind, c.scene, job.method, c.arch, seed, str(c.epochs), job.id, status, n)
    out.print(table)
    for spec in plan.specs:
        n_train, n_test = plan.frames[spec.name]
        where = "on disk" if is_on_disk(spec, data_root) else (
            "not on disk: rendered at the start of the run" if spec.synthetic else
            f"NOT ON DISK: the run stops until `kdbench scenes download {spec.name}`")
        out.print(f"{spec.name}: {n_train} train / {n_test} test frames, {where}", highlight=False)
    weights = sorted({(j.cfg.arch, j.cfg.weights) for j in plan.jobs if j.cfg.weights not in (None, "none")})
    for arch, w in weights:
        state = "fetched at the start of the run unless cached" if w == "imagenet" else (
            "found" if Path(w).is_file() else "MISSING: the run stops")
        out.print(f"weights of {arch}: {w} ({state})", highlight=False)
    out.print(f"{to_run} jobs to run, {reused} reused; about {images:,} images to process "
              "(train frames x epochs + test frames, per job to run). Dry run: nothing was trained or written.",
              highlight=False)
    return to_run, reused, images
