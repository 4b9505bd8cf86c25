"""`kdbench run`: plan methods x scenes x seeds, skip finished jobs, execute, record everything."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.config import get_preset
from kdbench.errors import KdbenchError
from kdbench.methods import load_plugin, parse_set_args
from kdbench.progress import JobProgress, console
from kdbench.reports.store import ResultsStore
from kdbench.runners.executors import EXECUTORS
from kdbench.runners.plan import Job, make_plan, parse_methods, parse_seeds
from kdbench.runners.preflight import check_device, check_weights, parse_weights
from kdbench.scenes.catalog import SceneSpec, is_on_disk, resolve_scenes, scene_dir
from kdbench.scenes.status import download_size


@dataclass
class BenchmarkResult:
    """What one `kdbench run` did."""

    jobs: list[Job]
    reused: list[str] = field(default_factory=list)  # ids already done before this run
    done: list[str] = field(default_factory=list)  # ids finished by this run
    failed: dict[str, str] = field(default_factory=dict)  # id -> error
    store_path: Path | None = None
    seconds: float = 0.0


def ensure_scenes(specs: list[SceneSpec], data_root: str | os.PathLike | None, load_size: int,
                  quiet: bool) -> dict[str, str]:
    """Stop before any training if a real scene is missing; render missing synthetic ones; build caches.

    Returns each scene's data fingerprint (scene name -> kdbench.scenes.cache.data_fingerprint).
    """
    from kdbench.scenes.cache import prepare_scene
    from kdbench.scenes.catalog import scene_lock

    missing = [s for s in specs if not s.synthetic and not is_on_disk(s, data_root)]
    if missing:
        lines = [f"  kdbench scenes download {s.name}   (download size: {download_size(s, data_root)}, "
                 f"{s.n_train + s.n_test} frames)" for s in missing]
        raise KdbenchError("these scenes are not on disk under " f"{scene_dir(missing[0], data_root).parent}:\n"
                           + "\n".join(lines) + "\n(or point --data-root / $KDBENCH_DATA at where they are)")
    fingerprints = {}
    for spec in specs:
        if spec.synthetic and not is_on_disk(spec, data_root):
            from kdbench.scenes.synth import render_scene

            # Locked and checked again: a second `kdbench run` on a fresh data root waits, then reuses it.
            with scene_lock(scene_dir(spec, data_root), f"rendering {spec.name}", quiet=quiet):
                if not is_on_disk(spec, data_root):
                    render_scene(spec, data_root, quiet=quiet)
                fingerprints[spec.name] = prepare_scene(spec, data_root, load_size=load_size, quiet=quiet)
        else:
            fingerprints[spec.name] = prepare_scene(spec, data_root, load_size=load_size, quiet=quiet)
    return fingerprints


def _job_row(job: Job, status: str, env_id: int) -> dict[str, Any]:
    c = job.cfg
    return {"id": job.id, "kind": job.kind, "scene": c.scene, "method": job.method, "arch": c.arch,
            "teacher_arch": c.teacher_arch, "teacher_id": job.teacher_id, "seed": c.seed, "preset": c.preset,
            "params": c.method_params, "config": c.to_dict(), "status": status, "run_dir": job.run_dir,
            "env_id": env_id}


@dataclass
class BenchmarkPlan:
    """What a run would do: its scenes, jobs in dependency order, plugin files and frame counts."""

    specs: list[SceneSpec]
    jobs: list[Job]
    plugins: list[str]
    load_size: int
    frames: dict[str, tuple[int, int]]  # scene -> (train, test) frames: on disk where it is, else the catalog

    def images(self, job: Job) -> int:
        """Images a job processes: its training frames times its epochs, plus its test frames."""
        n_train, n_test = self.frames[job.cfg.scene]
        return n_train * job.cfg.epochs + n_test


def plan_benchmark(methods: str | list[str] = "all", scenes: str | list[str] = "synthetic",
                   seeds: str | int | list[int] = 1, teacher_arch: str = "resnet34", student_arch: str = "resnet18",
                   preset: str = "quick", sets: list[str] | None = None, plugins: list[str] | None = None,
                   executor: str = "local", data_root: str | os.PathLike | None = None,
                   **overrides: Any) -> BenchmarkPlan:
    """The plan of a run (shared by the run itself and `--dry-run`): validates every argument, trains nothing."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "weights" in overrides:
        overrides["weights"] = parse_weights(overrides["weights"])
    plugins = [str(Path(p).resolve()) for p in plugins or []]
    for p in plugins:
        load_plugin(p)
    if executor not in EXECUTORS:
        raise KdbenchError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    specs = resolve_scenes(scenes)
    jobs = make_plan(parse_methods(methods), specs, parse_seeds(seeds), teacher_arch, student_arch, preset,
                     parse_set_args(sets), **overrides)
    frames = {s.name: _frame_counts(s, data_root) for s in specs}
    return BenchmarkPlan(specs, jobs, plugins, overrides.get("load_size") or get_preset(preset).load_size, frames)


def _frame_counts(spec: SceneSpec, data_root: str | os.PathLike | None) -> tuple[int, int]:
    if is_on_disk(spec, data_root):
        from kdbench.scenes.readers import read_split

        try:
            d = scene_dir(spec, data_root)
            return len(read_split(d, spec, "train")), len(read_split(d, spec, "test"))
        except KdbenchError:
            pass  # a broken scene is reported where it is read for training
    return spec.n_train, spec.n_test


def is_reusable(row: dict[str, Any] | None, job: Job, runs_dir: str | os.PathLike) -> bool:
    """A job is reused when the store has it done and its checkpoint is still there."""
    return bool(row and row["status"] == "done" and (Path(runs_dir) / job.run_dir / "checkpoint.pt").is_file())


def run_benchmark(methods: str | list[str] = "all", scenes: str | list[str] = "synthetic",
                  seeds: str | int | list[int] = 1, teacher_arch: str = "resnet34", student_arch: str = "resnet18",
                  preset: str = "quick", sets: list[str] | None = None, plugins: list[str] | None = None,
                  executor: str = "local", address: str | None = None, runs_dir: str | os.PathLike = "runs",
                  data_root: str | os.PathLike | None = None, quiet: bool = False, device: str | None = None,
                  precision: str | None = "auto", jobs_per_gpu: int | str | None = None,
                  checkpoint_every: float | None = None, **overrides: Any) -> BenchmarkResult:
    """Run the benchmark; finished jobs (same config hash) are reused, failed ones recorded, none lost.

    `overrides` set TrainConfig fields for every job (e.g. epochs=2, load_size=32 in tests; weights may be
    `ARCH=PATH,...`). Initial weights and the device are checked before any scene is prepared or job trained.
    `precision` 'auto' is resolved for the device before planning, so every job's config records what it trains
    in; `jobs_per_gpu` (None: auto) jobs run at once on each visible GPU (on CPU: processes sharing the cores).
    """
    from kdbench.runners.concurrency import parse_jobs_per_gpu
    from kdbench.runners.precision import resolve_precision

    t_start = time.perf_counter()
    overrides["precision"] = resolve_precision(precision, check_device(device))
    jobs_per_gpu = parse_jobs_per_gpu(jobs_per_gpu)
    plan = plan_benchmark(methods, scenes, seeds, teacher_arch, student_arch, preset, sets, plugins, executor,
                          data_root, **overrides)
    jobs, plugins = plan.jobs, plan.plugins
    device = check_device(device)
    check_weights({(j.cfg.arch, j.cfg.weights) for j in jobs})
    ensure_scenes(plan.specs, data_root, plan.load_size, quiet)
    plan.frames = {s.name: _frame_counts(s, data_root) for s in plan.specs}  # synthetic ones exist now

    from kdbench.runners.environment import environment

    store = ResultsStore(runs_dir)
    result = BenchmarkResult(jobs, store_path=store.path)
    try:
        env_id = store.add_environment(environment(device))
        todo = []
        for job in jobs:
            if is_reusable(store.get_job(job.id), job, runs_dir):
                result.reused.append(job.id)
                continue
            store.upsert_job(_job_row(job, "pending", env_id))
            todo.append(job)
        teachers = {j.id: j for j in jobs if j.kind == "teacher"}
        by_id = {j.id: j for j in todo}
        if not quiet:
            console.print(f"[bold]kdbench run[/]: {len(jobs)} jobs, {len(result.reused)} already done, "
                          f"{len(todo)} to run ({executor} executor, {sum(map(plan.images, todo)):,} images to "
                          f"process); store {store.path}", highlight=False, soft_wrap=True)
        with JobProgress(len(todo), sum(plan.images(j) for j in todo), quiet) as progress:

            def on_start(job: Job) -> None:
                store.upsert_job({"id": job.id, "status": "running"})
                progress.start(job.label, job.cfg.epochs, plan.images(job), short=_short_label(job))

            run = EXECUTORS[executor]
            for res in run(todo, teachers, runs_dir, data_root, tuple(plugins), address=address,
                           on_start=on_start if executor == "local" else None, on_epoch=progress.epoch,
                           device=device, jobs_per_gpu=jobs_per_gpu, checkpoint_every=checkpoint_every):
                env = store.add_environment(res["env"]) if res.get("env") else env_id
                job = by_id[res["id"]]
                if res["status"] == "done":
                    store.finish_job(res["id"], res["metrics"], checkpoint=res["checkpoint"],
                                     epochs_done=res["epochs_done"], train_seconds=res["train_seconds"],
                                     eval_seconds=res["eval_seconds"], env_id=env)
                    result.done.append(res["id"])
                    m = res["metrics"]
                    progress.finish(job.label, True, f"median {m.get('median_t', float('nan')):.3g} m / "
                                    f"{m.get('median_r', float('nan')):.3g} deg", plan.images(job))
                else:
                    store.upsert_job({"id": res["id"], "status": "failed", "error": res["error"], "env_id": env})
                    result.failed[res["id"]] = res["error"]
                    progress.finish(job.label, False, res["error"], plan.images(job))
    finally:
        store.close()
    result.seconds = time.perf_counter() - t_start
    return result


def _short_label(job: Job) -> str:
    c = job.cfg
    return f"{c.arch} {'teacher' if job.kind == 'teacher' else job.method} {c.scene} s{c.seed}"
