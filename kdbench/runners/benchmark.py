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
from kdbench.progress import console, make_progress
from kdbench.reports.store import ResultsStore
from kdbench.runners.executors import EXECUTORS
from kdbench.runners.plan import Job, make_plan, parse_methods, parse_seeds
from kdbench.scenes.catalog import SceneSpec, is_on_disk, resolve_scenes, scene_dir
from kdbench.scenes.status import human_bytes


@dataclass
class BenchmarkResult:
    """What one `kdbench run` did."""

    jobs: list[Job]
    reused: list[str] = field(default_factory=list)  # ids already done before this run
    done: list[str] = field(default_factory=list)  # ids finished by this run
    failed: dict[str, str] = field(default_factory=dict)  # id -> error
    store_path: Path | None = None
    seconds: float = 0.0


def ensure_scenes(specs: list[SceneSpec], data_root: str | os.PathLike | None, load_size: int, quiet: bool) -> None:
    """Stop before any training if a real scene is missing; render missing synthetic ones; build caches."""
    from kdbench.scenes.cache import prepare_scene

    missing = [s for s in specs if not s.synthetic and not is_on_disk(s, data_root)]
    if missing:
        lines = [f"  kdbench scenes download {s.name}   (download size: {human_bytes(s.zip_bytes)}, "
                 f"{s.n_train + s.n_test} frames)" for s in missing]
        raise KdbenchError("these scenes are not on disk under " f"{scene_dir(missing[0], data_root).parent}:\n"
                           + "\n".join(lines) + "\n(or point --data-root / $KDBENCH_DATA at where they are)")
    for spec in specs:
        if spec.synthetic and not is_on_disk(spec, data_root):
            from kdbench.scenes.synth import render_scene

            render_scene(spec, data_root, quiet=quiet)
        prepare_scene(spec, data_root, load_size=load_size, quiet=quiet)


def _job_row(job: Job, status: str, env_id: int) -> dict[str, Any]:
    c = job.cfg
    return {"id": job.id, "kind": job.kind, "scene": c.scene, "method": c.method, "arch": c.arch,
            "teacher_arch": c.teacher_arch, "teacher_id": job.teacher_id, "seed": c.seed, "preset": c.preset,
            "params": c.method_params, "config": c.to_dict(), "status": status, "run_dir": job.run_dir,
            "env_id": env_id}


def run_benchmark(methods: str | list[str] = "all", scenes: str | list[str] = "synthetic",
                  seeds: str | int | list[int] = 1, teacher_arch: str = "resnet34", student_arch: str = "resnet18",
                  preset: str = "quick", sets: list[str] | None = None, plugins: list[str] | None = None,
                  executor: str = "local", address: str | None = None, runs_dir: str | os.PathLike = "runs",
                  data_root: str | os.PathLike | None = None, quiet: bool = False,
                  **overrides: Any) -> BenchmarkResult:
    """Run the benchmark; finished jobs (same config hash) are reused, failed ones recorded, none lost.

    `overrides` set TrainConfig fields for every job (e.g. epochs=2, load_size=32 in tests).
    """
    t_start = time.perf_counter()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    plugins = [str(Path(p).resolve()) for p in plugins or []]
    for p in plugins:
        load_plugin(p)
    if executor not in EXECUTORS:
        raise KdbenchError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    specs = resolve_scenes(scenes)
    jobs = make_plan(parse_methods(methods), specs, parse_seeds(seeds), teacher_arch, student_arch, preset,
                     parse_set_args(sets), **overrides)
    ensure_scenes(specs, data_root, overrides.get("load_size") or get_preset(preset).load_size, quiet)

    from kdbench.runners.environment import environment

    store = ResultsStore(runs_dir)
    result = BenchmarkResult(jobs, store_path=store.path)
    try:
        env_id = store.add_environment(environment())
        todo = []
        for job in jobs:
            row = store.get_job(job.id)
            if row and row["status"] == "done" and (Path(runs_dir) / job.run_dir / "checkpoint.pt").is_file():
                result.reused.append(job.id)
                continue
            store.upsert_job(_job_row(job, "pending", env_id))
            todo.append(job)
        teachers = {j.id: j for j in jobs if j.kind == "teacher"}
        if not quiet:
            console.print(f"[bold]kdbench run[/]: {len(jobs)} jobs, {len(result.reused)} already done, "
                          f"{len(todo)} to run ({executor} executor); store {store.path}")
        with make_progress(quiet) as progress:
            jobs_bar = progress.add_task("jobs", total=len(todo), info="")
            epoch_bar = progress.add_task("epochs", total=1, info="", visible=False)

            def on_start(job: Job) -> None:
                store.upsert_job({"id": job.id, "status": "running"})
                progress.update(epoch_bar, description=job.label, completed=0, total=job.cfg.epochs,
                                visible=executor == "local", info="")

            def on_epoch(epoch: int, epochs: int, loss: float) -> None:
                progress.update(epoch_bar, completed=epoch, total=epochs, info=f"loss {loss:.4g}")

            run = EXECUTORS[executor]
            for res in run(todo, teachers, runs_dir, data_root, tuple(plugins), address=address,
                           on_start=on_start, on_epoch=on_epoch):
                env = store.add_environment(res["env"]) if res.get("env") else env_id
                if res["status"] == "done":
                    store.finish_job(res["id"], res["metrics"], checkpoint=res["checkpoint"],
                                     epochs_done=res["epochs_done"], train_seconds=res["train_seconds"],
                                     eval_seconds=res["eval_seconds"], env_id=env)
                    result.done.append(res["id"])
                else:
                    store.upsert_job({"id": res["id"], "status": "failed", "error": res["error"], "env_id": env})
                    result.failed[res["id"]] = res["error"]
                progress.advance(jobs_bar)
    finally:
        store.close()
    result.seconds = time.perf_counter() - t_start
    return result
