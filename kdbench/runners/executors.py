"""Executors: `local` runs jobs in order in this process; `ray` runs them as Ray tasks.

Both yield each job's result dict to the driver as it finishes; only the driver writes the store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.runners.jobs import run_job, teacher_checkpoint
from kdbench.runners.plan import Job

CPUS_PER_RAY_JOB = 1


def _teacher_failed(job: Job, teacher_result: dict[str, Any] | None) -> dict[str, Any] | None:
    if teacher_result is not None and teacher_result.get("status") != "done":
        return {"id": job.id, "run_dir": job.run_dir, "status": "failed",
                "error": f"its teacher job {job.teacher_id} failed: {teacher_result.get('error')}"}
    return None


def run_local(jobs: list[Job], teachers: dict[str, Job], runs_dir: str | os.PathLike,
              data_root: str | os.PathLike | None, plugins: tuple[str, ...] = (),
              on_start: Callable[[Job], None] | None = None,
              on_epoch: Callable[[int, int, float], None] | None = None, device: str | None = None,
              **_: Any) -> Iterator[dict[str, Any]]:
    """Run jobs one after another (they come in dependency order) and yield each result."""
    results: dict[str, dict[str, Any]] = {}
    for job in jobs:
        failed = _teacher_failed(job, results.get(job.teacher_id)) if job.teacher_id else None
        if failed:
            results[job.id] = failed
            yield failed
            continue
        if on_start:
            on_start(job)
        ckpt = teacher_checkpoint(runs_dir, teachers[job.teacher_id]) if job.teacher_id else None
        results[job.id] = run_job(job, runs_dir, data_root, ckpt, plugins, on_epoch, device)
        yield results[job.id]


def _ray_job(job: Job, runs_dir: str, data_root: str | None, teacher_ckpt: str | None,
             plugins: tuple[str, ...], teacher_result: dict[str, Any] | None = None,
             device: str | None = None) -> dict[str, Any]:
    # Ray resolves `teacher_result` (an ObjectRef at submit time) before this runs: students wait for teachers.
    failed = _teacher_failed(job, teacher_result)
    if failed:
        return failed
    import torch

    torch.set_num_threads(CPUS_PER_RAY_JOB)  # results are bitwise reproducible for a given thread count
    return run_job(job, runs_dir, data_root, teacher_ckpt, plugins, device=device)


def run_ray(jobs: list[Job], teachers: dict[str, Job], runs_dir: str | os.PathLike,
            data_root: str | os.PathLike | None, plugins: tuple[str, ...] = (), address: str | None = None,
            on_start: Callable[[Job], None] | None = None, device: str | None = None,
            **_: Any) -> Iterator[dict[str, Any]]:
    """Submit every job as a Ray task (one GPU each where the cluster has GPUs) and yield results."""
    try:
        import ray
    except ImportError:
        raise KdbenchError("the ray executor needs Ray: pip install 'kdbench[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except Exception as exc:
            raise KdbenchError(f"could not start or join a Ray cluster (address {address or 'local'}): {exc}") from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_cpus=CPUS_PER_RAY_JOB, num_gpus=1 if gpus else 0, max_retries=0)(_ray_job)
        runs_dir, data_root = os.path.abspath(runs_dir), (os.path.abspath(data_root) if data_root else None)
        refs: dict[str, Any] = {}
        pending = {}
        for job in jobs:
            teacher_ref = refs.get(job.teacher_id) if job.teacher_id else None
            ckpt = str(teacher_checkpoint(runs_dir, teachers[job.teacher_id])) if job.teacher_id else None
            refs[job.id] = task.remote(job, runs_dir, data_root, ckpt, tuple(plugins), teacher_ref, device)
            pending[refs[job.id]] = job
            if on_start:
                on_start(job)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayError as exc:  # worker died: record it as this job's failure
                yield {"id": job.id, "run_dir": job.run_dir, "status": "failed", "error": f"Ray: {exc}"}
    finally:
        if started_here:
            ray.shutdown()


EXECUTORS = {"local": run_local, "ray": run_ray}
