"""Executors: `local` runs jobs in this process, or several at once in a process pool; `ray` runs Ray tasks.

`local` with more than one job slot (`--jobs-per-gpu`, or several GPUs) uses the standard library's
ProcessPoolExecutor ('spawn' context: CUDA cannot be forked): each job goes to a free slot, a student once its
teacher is done. Every executor yields each job's result dict to the driver as it finishes; only the driver
writes the store.

Each job's torch CPU thread count is fixed before it runs (`concurrency.job_threads`: the pool's share of the
machine, the same for a job alone as in a full pool; CPUS_PER_RAY_JOB on Ray) and recorded in its config
(`threads`); a job that resumes keeps the count it started with (runners/train.py).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.runners.concurrency import job_slots, job_threads
from kdbench.runners.jobs import run_job, teacher_checkpoint
from kdbench.runners.plan import Job

CPUS_PER_RAY_JOB = 1
# A Ray task whose worker or node dies (preempted, lost, out of memory) is run again up to this many times;
# every job resumes from its checkpoint, so a retry loses at most the work since the last save.
RAY_MAX_RETRIES = 3
ATTEMPTS_FILE = ".ray-attempts"  # in the job's folder: one line per attempt, "<submission> <pid>"


def with_threads(jobs: list[Job], threads: int) -> list[Job]:
    """The jobs with their torch CPU thread count in their configs (a label: their ids do not change)."""
    return [dataclasses.replace(j, cfg=j.cfg.replace(threads=threads)) for j in jobs]


def _teacher_failed(job: Job, teacher_result: dict[str, Any] | None) -> dict[str, Any] | None:
    if teacher_result is not None and teacher_result.get("status") != "done":
        return {"id": job.id, "run_dir": job.run_dir, "status": "failed",
                "error": f"its teacher job {job.teacher_id} failed: {teacher_result.get('error')}"}
    return None


def run_local(jobs: list[Job], teachers: dict[str, Job], runs_dir: str | os.PathLike,
              data_root: str | os.PathLike | None, plugins: tuple[str, ...] = (),
              on_start: Callable[[Job], None] | None = None,
              on_epoch: Callable[[int, int, float], None] | None = None, jobs_per_gpu: int | None = None,
              device: str | None = None, checkpoint_every: float | None = None,
              **_: Any) -> Iterator[dict[str, Any]]:
    """Run jobs one after another in this process, or in a process pool when there are several job slots."""
    slots = job_slots([j.cfg for j in jobs], jobs_per_gpu, device)
    jobs = with_threads(jobs, job_threads(slots))  # a lone job computes what it would in the pool
    if len(slots) > 1 and len(jobs) > 1:
        # Like Ray's tasks, pooled jobs report no start or epochs: the driver's bars follow one job at a time.
        yield from run_pool(jobs, teachers, runs_dir, data_root, plugins, slots, None, checkpoint_every)
        return
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
        results[job.id] = run_job(job, runs_dir, data_root, ckpt, plugins, on_epoch, device=device,
                                  checkpoint_every=checkpoint_every)
        yield results[job.id]


def run_pool(jobs: list[Job], teachers: dict[str, Job], runs_dir: str | os.PathLike,
             data_root: str | os.PathLike | None, plugins: tuple[str, ...], slots: list[str],
             on_start: Callable[[Job], None] | None = None,
             checkpoint_every: float | None = None) -> Iterator[dict[str, Any]]:
    """Run jobs in worker processes, one per slot (a device name); students wait for their teacher.

    The jobs carry their thread counts already (run_local sets them with `with_threads`).
    """
    from kdbench.runners.batches import device_data_share

    data_share = device_data_share() / (len(slots) // len(set(slots)))  # each job on a GPU holds its own copy
    planned = {j.id for j in jobs}
    results: dict[str, dict[str, Any]] = {}
    ready = deque(j for j in jobs if j.teacher_id not in planned)
    waiting = [j for j in jobs if j.teacher_id in planned]
    free, running = list(slots), {}
    with ProcessPoolExecutor(len(slots), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with_driver) as pool:
        while ready or running:
            while ready and free:
                job = ready.popleft()
                failed = _teacher_failed(job, results.get(job.teacher_id)) if job.teacher_id else None
                if failed:
                    results[job.id] = failed
                    yield failed
                    continue
                slot = free.pop(0)
                ckpt = teacher_checkpoint(runs_dir, teachers[job.teacher_id]) if job.teacher_id else None
                try:
                    fut: Future = pool.submit(run_job, job, runs_dir, data_root, ckpt, plugins, None, slot,
                                              checkpoint_every=checkpoint_every, data_share=data_share)
                except BrokenProcessPool:
                    raise KdbenchError(_POOL_DIED) from None
                running[fut] = (job, slot)
                if on_start:
                    on_start(job)
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                job, slot = running.pop(fut)
                free.append(slot)
                try:
                    res = fut.result()
                except BrokenProcessPool as exc:  # a worker died (out of memory, killed)
                    res = {"id": job.id, "run_dir": job.run_dir, "status": "failed",
                           "error": f"worker died: {exc}. {_POOL_DIED}"}
                results[job.id] = res
                yield res
                ready.extend(j for j in waiting if j.teacher_id == job.id)
                waiting = [j for j in waiting if j.teacher_id != job.id]


_POOL_DIED = ("a job worker process died (out of memory, killed, or it could not start); the jobs not yet started "
              "were left for the next run, so rerun the same command to continue. Calling kdbench from your own "
              "script? Workers are spawned and re-import it: put the call under `if __name__ == \"__main__\":`")


def _die_with_driver() -> None:
    """Linux: a worker gets SIGTERM when the driver dies (then saves and stops) instead of training on alone."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _ray_job(job: Job, runs_dir: str, data_root: str | None, teacher_ckpt: str | None,
             plugins: tuple[str, ...], teacher_result: dict[str, Any] | None = None,
             device: str | None = None, checkpoint_every: float | None = None,
             submission: str = "") -> dict[str, Any]:
    # Ray resolves `teacher_result` (an ObjectRef at submit time) before this runs: students wait for teachers.
    failed = _teacher_failed(job, teacher_result)
    if failed:
        return failed
    retries = _count_attempt(Path(runs_dir) / job.run_dir, submission) - 1
    result = run_job(job, runs_dir, data_root, teacher_ckpt, plugins, device=device,
                     checkpoint_every=checkpoint_every)
    return {**result, "retries": retries}


def _count_attempt(folder: Path, submission: str) -> int:
    """Note this attempt of a submission in the job's folder; return how many attempts it has had (1 = first)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ATTEMPTS_FILE, "a", encoding="utf-8") as fh:  # one short append: atomic enough per line
        fh.write(f"{submission} {os.getpid()}\n")
    lines = (folder / ATTEMPTS_FILE).read_text(encoding="utf-8").splitlines()
    return sum(1 for line in lines if line.split(" ", 1)[0] == submission)


def run_ray(jobs: list[Job], teachers: dict[str, Job], runs_dir: str | os.PathLike,
            data_root: str | os.PathLike | None, plugins: tuple[str, ...] = (), address: str | None = None,
            on_start: Callable[[Job], None] | None = None, device: str | None = None,
            jobs_per_gpu: int | None = None, checkpoint_every: float | None = None,
            **_: Any) -> Iterator[dict[str, Any]]:
    """Submit every job as a Ray task (1/jobs_per_gpu of a GPU each where the cluster has GPUs)."""
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
        share = 1.0 / (jobs_per_gpu or 1) if gpus else 0  # Ray's fractional GPUs: several jobs per GPU
        # Retried when its worker or node dies (not for a failed job: run_job returns those as results).
        task = ray.remote(num_cpus=CPUS_PER_RAY_JOB, num_gpus=share, max_retries=RAY_MAX_RETRIES,
                          retry_exceptions=False)(_ray_job)
        submission = uuid.uuid4().hex[:12]
        runs_dir, data_root = os.path.abspath(runs_dir), (os.path.abspath(data_root) if data_root else None)
        jobs = with_threads(jobs, CPUS_PER_RAY_JOB)
        refs: dict[str, Any] = {}
        pending = {}
        for job in jobs:
            teacher_ref = refs.get(job.teacher_id) if job.teacher_id else None
            ckpt = str(teacher_checkpoint(runs_dir, teachers[job.teacher_id])) if job.teacher_id else None
            refs[job.id] = task.remote(job, runs_dir, data_root, ckpt, tuple(plugins), teacher_ref, device,
                                       checkpoint_every, submission)
            pending[refs[job.id]] = job
            if on_start:
                on_start(job)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayError as exc:  # died on every attempt: record it as this job's failure
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                yield {"id": job.id, "run_dir": job.run_dir, "status": "failed", "retries": RAY_MAX_RETRIES,
                       "error": f"Ray: {first} (its worker died on all {RAY_MAX_RETRIES + 1} attempts); rerun the "
                                "same command to continue from its checkpoint"}
    finally:
        if started_here:
            ray.shutdown()


EXECUTORS = {"local": run_local, "ray": run_ray}
