"""`kdbench run`: plan methods x scenes x seeds, skip finished jobs, execute, record everything."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.config import get_preset
from kdbench.errors import KdbenchError
from kdbench.methods import load_plugin, parse_set_args
from kdbench.models.families import parse_archs
from kdbench.progress import JobProgress, console
from kdbench.reports.store import (
    FINISHED,
    STORE_NAME,
    ResultsStore,
    StoreNotWritable,
    check_runs_dir,
    check_store,
    rebuild_store,
)
from kdbench.runners.executors import EXECUTORS
from kdbench.runners.plan import Job, crossed_seeds, make_plan, parse_methods, parse_seeds
from kdbench.runners.preflight import (
    check_checkpoint_every,
    check_device,
    check_load_size,
    check_method_fit,
    check_weights,
    check_weights_keys,
    parse_weights,
)
from kdbench.runners.train import CHECKPOINT
from kdbench.scenes.catalog import SceneSpec, is_on_disk, resolve_scenes, scene_dir
from kdbench.scenes.status import download_size


@dataclass
class BenchmarkResult:
    """What one `kdbench run` did."""

    jobs: list[Job]
    reused: list[str] = field(default_factory=list)  # ids finished before (or by another run during) this one
    done: list[str] = field(default_factory=list)  # ids trained by this run
    evaluated: list[str] = field(default_factory=list)  # ids whose final checkpoint was only evaluated now
    failed: dict[str, str] = field(default_factory=dict)  # id -> error
    kept: list[str] = field(default_factory=list)  # failed ids whose earlier finished result is kept
    elsewhere: set[str] = field(default_factory=set)  # ids another kdbench run was running (we waited)
    repaired: dict[str, str] = field(default_factory=dict)  # finished teachers retrained: id -> why
    superseded: list[str] = field(default_factory=list)  # older results replaced by this run's (kept in the store)
    rebuilt: tuple[Path | None, int] | None = None  # (damaged store moved to, jobs recovered) with rebuild=True
    store_path: Path | None = None
    seconds: float = 0.0


LOCK_NAME = ".lock"


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


def _known_fingerprint(spec: SceneSpec, data_root: str | os.PathLike | None, load_size: int) -> str | None:
    """The scene's data fingerprint if its caches are prepared, else None; builds nothing (a dry run writes nothing)."""
    from kdbench.scenes.cache import data_fingerprint

    try:
        return data_fingerprint(spec, data_root, load_size)
    except KdbenchError:
        return None


def _job_row(job: Job, status: str, env_id: int) -> dict[str, Any]:
    c = job.cfg
    return {"id": job.id, "kind": job.kind, "scene": c.scene, "method": job.method, "arch": c.arch,
            "teacher_arch": c.teacher_arch, "teacher_id": job.teacher_id, "seed": c.seed, "preset": c.preset,
            "params": c.method_params, "config": c.to_dict(), "status": status, "run_dir": job.run_dir,
            "env_id": env_id, "data": c.data}


def with_data(jobs: list[Job], fingerprints: dict[str, str]) -> list[Job]:
    """The plan with each job's data fingerprint in its config: changed data is a different job.

    A student names its teacher by hash, so teachers are renamed first and students follow them.
    """
    renamed: dict[str, str] = {}
    out = []
    for job in jobs:
        cfg = job.cfg.replace(data=fingerprints[job.cfg.scene])
        teacher_id = renamed[job.teacher_id] if job.teacher_id else None
        if teacher_id:
            cfg = cfg.replace(teacher_hash=teacher_id)
        new = dataclasses.replace(job, cfg=cfg, teacher_id=teacher_id)  # keeps the variant label
        renamed[job.id] = new.id
        out.append(new)
    return out


def _checkpoint_problem(runs_dir: Path, job: Job, row: dict[str, Any], store: ResultsStore) -> str | None:
    """Why a finished job's checkpoint cannot be reused (None when it is sound).

    Checked against the size and SHA-256 recorded when it finished; a row from before they were recorded
    is checked by loading the file (weights only), and the checksum is recorded for next time.
    """
    from kdbench.reports.store import file_sha256
    from kdbench.runners.train import load_checkpoint

    path = runs_dir / job.run_dir / CHECKPOINT
    if not path.is_file():
        return f"its checkpoint {path} is missing"
    size = path.stat().st_size
    if row.get("ckpt_bytes") is not None:
        if size != row["ckpt_bytes"]:
            return f"its checkpoint {path} has {size} bytes, {row['ckpt_bytes']} were written (truncated or replaced)"
        if file_sha256(path)[1] != row["ckpt_sha256"]:
            return f"its checkpoint {path} does not match the SHA-256 recorded when it finished (damaged)"
        return None
    try:
        ckpt = load_checkpoint(path)
    except KdbenchError as exc:
        return str(exc)
    if ckpt.get("hash") != job.id or int(ckpt.get("epoch", -1)) != job.cfg.epochs:
        return f"its checkpoint {path} is not the finished model of this job"
    store.set_fields(job.id, **dict(zip(("ckpt_bytes", "ckpt_sha256"), file_sha256(path))))
    return None


def _try_lock(stack: ExitStack, runs_dir: Path, job: Job) -> bool:
    """Lock a job's folder for this process (held until `stack` closes); False if another process holds it."""
    from kdbench.locks import file_lock

    folder = runs_dir / job.run_dir
    folder.mkdir(parents=True, exist_ok=True)
    try:
        stack.enter_context(file_lock(folder / LOCK_NAME, f"job {job.label}", timeout=0, quiet=True))
    except KdbenchError:
        return False
    return True


def _wait_for(runs_dir: Path, jobs: list[Job], quiet: bool) -> None:
    """Block until no other process holds these jobs' locks."""
    from kdbench.locks import file_lock

    for job in jobs:
        with file_lock(runs_dir / job.run_dir / LOCK_NAME, f"job {job.label} (running in another kdbench run)",
                       quiet=quiet):
            pass


def _all_done_read_only(runs: Path, jobs: list[Job]) -> bool:
    """Whether the store (read without writing) has every job done, so a run has nothing to write."""
    if not (runs / STORE_NAME).is_file():
        return False
    with ResultsStore(runs, create=False) as store:
        return all((row := store.get_job(j.id)) is not None and row["status"] == "done" for j in jobs)


def _finished(store: ResultsStore, job: Job) -> dict[str, Any] | None:
    row = store.get_job(job.id)
    return row if is_reusable(row) else None


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
                   seeds: str | int | list[int] | None = None, teacher_arch: str = "resnet34",
                   student_arch: str = "resnet18", preset: str = "quick", sets: list[str] | None = None,
                   plugins: list[str] | None = None, executor: str = "local",
                   data_root: str | os.PathLike | None = None, planner: Any = None,
                   teacher_seeds: str | int | list[int] | None = None,
                   student_seeds: str | int | list[int] | None = None, **overrides: Any) -> BenchmarkPlan:
    """The plan of a run (shared by the run itself and `--dry-run`): validates every argument, trains nothing.

    `seeds` (default 1): teacher seed = student seed; or `teacher_seeds` x `student_seeds` (crossed design).
    `planner(specs, seeds, teacher_arch, student_arch, preset, sets, **overrides) -> jobs` replaces
    make_plan of `methods` (tuning trials, tuned rows: kdbench.runners.tune and .tuned).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "weights" in overrides:
        overrides["weights"] = parse_weights(overrides["weights"])
        students = student_arch if isinstance(student_arch, (list, tuple)) else parse_archs(student_arch)
        check_weights_keys(overrides["weights"], {teacher_arch, *students})
    plugins = [str(Path(p).resolve()) for p in plugins or []]
    for p in plugins:
        load_plugin(p)
    if executor not in EXECUTORS:
        raise KdbenchError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    specs = resolve_scenes(scenes)
    crossed = crossed_seeds(seeds, teacher_seeds, student_seeds)
    if crossed is not None and planner is not None:  # a planner (tuned rows, tuning trials) plans plain seeds only
        raise KdbenchError("--teacher-seeds/--student-seeds cannot be combined with tuned rows (--hparams, "
                           "NAME:tuned) yet: run the tuned rows with --seeds S")
    seeds = 1 if seeds is None else seeds
    if planner is not None:
        jobs = planner(specs, parse_seeds(seeds), teacher_arch, student_arch, preset, parse_set_args(sets),
                       **overrides)
    else:
        jobs = make_plan(parse_methods(methods), specs, parse_seeds(seeds), teacher_arch, student_arch, preset,
                         parse_set_args(sets), crossed=crossed, **overrides)
    load_size = overrides.get("load_size") or get_preset(preset).load_size
    jobs = with_data(jobs, {s.name: _known_fingerprint(s, data_root, load_size) for s in specs})
    frames = {s.name: frame_counts(s, data_root) for s in specs}
    return BenchmarkPlan(specs, jobs, plugins, load_size, frames)


def preflight_benchmark(methods: str | list[str] = "all", scenes: str | list[str] = "synthetic",
                        seeds: str | int | list[int] | None = None, teacher_arch: str = "resnet34",
                        student_arch: str = "resnet18", preset: str = "quick", sets: list[str] | None = None,
                        plugins: list[str] | None = None, executor: str = "local",
                        data_root: str | os.PathLike | None = None, *, device: str | None = None,
                        precision: str | None = "auto", jobs_per_gpu: int | str | None = None,
                        checkpoint_every: float | None = None, runs_dir: str | os.PathLike = "runs",
                        fetch: bool = True, **overrides: Any) -> tuple[BenchmarkPlan, str | None, int | None]:
    """Every check a run makes before its first job, in one place: `run` and `run --dry-run` both call it.

    Returns (plan, device or None for auto, jobs per GPU or None for auto). `fetch=False` (the dry run)
    downloads no ImageNet weights; every other check is the same.
    """
    from kdbench.runners.concurrency import parse_jobs_per_gpu
    from kdbench.runners.precision import resolve_precision

    device = check_device(device)
    overrides["precision"] = resolve_precision(precision, device)
    jobs_per_gpu = parse_jobs_per_gpu(jobs_per_gpu)
    check_checkpoint_every(checkpoint_every)
    check_load_size(overrides.get("load_size"))
    check_runs_dir(runs_dir)
    plan = plan_benchmark(methods, scenes, seeds, teacher_arch, student_arch, preset, sets, plugins, executor,
                          data_root, **overrides)
    check_weights({(j.cfg.arch, j.cfg.weights) for j in plan.jobs}, fetch=fetch)
    check_method_fit(plan.jobs)
    return plan, device, jobs_per_gpu


def frame_counts(spec: SceneSpec, data_root: str | os.PathLike | None) -> tuple[int, int]:
    """(train, test) frames of a scene: its split files when on disk, else the catalog's counts."""
    if is_on_disk(spec, data_root):
        from kdbench.scenes.readers import read_split

        try:
            d = scene_dir(spec, data_root)
            return len(read_split(d, spec, "train")), len(read_split(d, spec, "test"))
        except KdbenchError:
            pass  # a broken scene is reported where it is read for training
    return spec.n_train, spec.n_test


def is_reusable(row: dict[str, Any] | None) -> bool:
    """A job is reused when the store has its finished result (done, or superseded and current again).

    Its checkpoint is needed, and then verified, only while a student still has to learn from it (see
    `run_benchmark`): a finished student whose checkpoint was deleted keeps its result.
    """
    return bool(row and row["status"] in FINISHED)


def run_benchmark(methods: str | list[str] = "all", scenes: str | list[str] = "synthetic",
                  seeds: str | int | list[int] | None = None, teacher_arch: str = "resnet34",
                  student_arch: str = "resnet18", preset: str = "quick", sets: list[str] | None = None,
                  plugins: list[str] | None = None, executor: str = "local", address: str | None = None,
                  runs_dir: str | os.PathLike = "runs", teacher_seeds: str | int | list[int] | None = None,
                  student_seeds: str | int | list[int] | None = None,
                  data_root: str | os.PathLike | None = None, quiet: bool = False, device: str | None = None,
                  precision: str | None = "auto", jobs_per_gpu: int | str | None = None,
                  checkpoint_every: float | None = None, rebuild: bool = False,
                  **overrides: Any) -> BenchmarkResult:
    """Run the benchmark; finished jobs (same config and data) are reused, failed ones recorded, none lost.

    `seeds` (default 1) trains a teacher per seed for the students of that seed; `teacher_seeds` and
    `student_seeds` instead cross them (per scene N teachers x M student seeds of every KD method; the
    baseline on the M student seeds), so the report can split a row's variance into teacher and student.
    `overrides` set TrainConfig fields for every job (e.g. epochs=2, load_size=32 in tests; weights may be
    `ARCH=PATH,...`). Initial weights and the device are checked before any scene is prepared or job trained.
    `precision` 'auto' is resolved for the device before planning, so every job's config records what it trains
    in; `jobs_per_gpu` (None: auto) jobs run at once on each visible GPU (on CPU: processes sharing the cores).
    `rebuild` moves a damaged results store aside and rebuilds it from the run folders first. A job is
    locked while it runs (`<run folder>/.lock`): a second run on the same runs folder leaves it to the
    first, waits for it, and then reuses its result.
    """
    t_start = time.perf_counter()
    runs = Path(runs_dir)
    plan, device, jobs_per_gpu = preflight_benchmark(
        methods, scenes, seeds, teacher_arch, student_arch, preset, sets, plugins, executor, data_root,
        device=device, precision=precision, jobs_per_gpu=jobs_per_gpu, checkpoint_every=checkpoint_every,
        runs_dir=runs, teacher_seeds=teacher_seeds,
        student_seeds=student_seeds, **overrides)
    jobs, plugins = plan.jobs, plan.plugins
    result = BenchmarkResult(jobs)
    if rebuild:
        result.rebuilt = rebuild_store(runs)
    else:
        check_store(runs)  # a damaged store stops the run before any scene work
    fingerprints = ensure_scenes(plan.specs, data_root, plan.load_size, quiet)
    plan.frames = {s.name: frame_counts(s, data_root) for s in plan.specs}  # synthetic ones exist now
    jobs = plan.jobs = result.jobs = with_data(jobs, fingerprints)

    from kdbench.runners.environment import environment

    try:
        store = ResultsStore(runs)
    except StoreNotWritable:
        if not _all_done_read_only(runs, jobs):
            raise
        # Nothing to train and nothing to record: a read-only runs folder is enough to report it.
        result.reused = [j.id for j in jobs]
        result.store_path = runs / STORE_NAME
        result.seconds = time.perf_counter() - t_start
        return result
    result.store_path = store.path
    try:
        env_id = store.add_environment(environment(device))
        finished = {j.id: _finished(store, j) for j in jobs}
        # A finished teacher must have a sound checkpoint only while a student still has to learn from it.
        needed = {j.teacher_id for j in jobs if j.teacher_id and not finished[j.id]}
        for job in jobs:
            row = finished[job.id]
            if row and job.id in needed:
                problem = _checkpoint_problem(runs, job, row, store)
                if problem:
                    ckpt = runs / job.run_dir / CHECKPOINT
                    if ckpt.is_file():  # kept for inspection, out of the way of the retraining
                        os.replace(ckpt, ckpt.with_name(CHECKPOINT + ".damaged"))
                    result.repaired[job.id] = f"{job.label}: {problem}; retraining it"
                    finished[job.id] = None
        pending = []
        for job in jobs:
            if finished[job.id]:
                result.reused.append(job.id)
                if finished[job.id]["status"] == "superseded":  # the data went back to what it was
                    result.superseded += store.reinstate(job.id)
            else:
                pending.append(job)
        teachers = {j.id: j for j in jobs if j.kind == "teacher"}
        if not quiet:
            console.print(f"[bold]kdbench run[/]: {len(jobs)} jobs, {len(result.reused)} already done, "
                          f"{len(pending)} to run ({executor} executor, {sum(map(plan.images, pending)):,} images "
                          f"to process); store {store.path}", highlight=False, soft_wrap=True)
        with JobProgress(len(pending), sum(plan.images(j) for j in pending), quiet) as progress:

            def on_start(job: Job) -> None:
                store.upsert_job({"id": job.id, "status": "running"})
                progress.start(job.label, job.cfg.epochs, plan.images(job), short=_short_label(job))

            round_args = dict(teachers=teachers, runs=runs, data_root=data_root, plugins=plugins,
                              executor=executor, address=address, device=device, store=store, env_id=env_id,
                              result=result, plan=plan, progress=progress,
                              on_start=on_start if executor == "local" else None, jobs_per_gpu=jobs_per_gpu,
                              checkpoint_every=checkpoint_every)
            while pending:
                deferred = _run_round(pending, **round_args)
                if not deferred:
                    break
                _wait_for(runs, [j for j in deferred if j.id in result.elsewhere], quiet)
                pending = deferred
    finally:
        store.close()
    result.seconds = time.perf_counter() - t_start
    return result


def _run_round(pending: list[Job], *, teachers: dict[str, Job], runs: Path, data_root: str | os.PathLike | None,
               plugins: list[str], executor: str, address: str | None, device: str | None, store: ResultsStore,
               env_id: int, result: BenchmarkResult, plan: BenchmarkPlan, progress: JobProgress,
               on_start: Any, jobs_per_gpu: int | None, checkpoint_every: float | None) -> list[Job]:
    """Lock what no other process runs, run it, record the results; return the jobs left for later."""
    from kdbench.reports.store import file_sha256

    deferred: list[Job] = []
    with ExitStack() as locks:
        mine = []
        for job in pending:
            if job.teacher_id and any(d.id == job.teacher_id for d in deferred):
                deferred.append(job)  # its teacher is being trained elsewhere
            elif not _try_lock(locks, runs, job):
                result.elsewhere.add(job.id)
                deferred.append(job)
            elif job.id not in result.repaired and _finished(store, job):  # another run finished it
                result.reused.append(job.id)
                progress.finish(job.label, True, "finished by another kdbench run")
            else:
                mine.append(job)
        for job in mine:
            store.upsert_job(_job_row(job, "pending", env_id))
        by_id = {j.id: j for j in mine}
        for res in EXECUTORS[executor](mine, teachers, runs, data_root, tuple(plugins), address=address,
                                       on_start=on_start, on_epoch=progress.epoch, device=device,
                                       jobs_per_gpu=jobs_per_gpu, checkpoint_every=checkpoint_every):
            env = store.add_environment(res["env"]) if res.get("env") else env_id
            job = by_id[res["id"]]
            if res["status"] == "done":
                ckpt = runs / res["checkpoint"]
                size, sha = file_sha256(ckpt) if ckpt.is_file() else (None, None)
                result.superseded += store.finish_job(
                    res["id"], res["metrics"], checkpoint=res["checkpoint"], epochs_done=res["epochs_done"],
                    train_seconds=res["train_seconds"], eval_seconds=res["eval_seconds"], env_id=env,
                    ckpt_bytes=size, ckpt_sha256=sha, **_trained_config(res))
                if res.get("resumed_from") is not None and res["resumed_from"] >= res["epochs_done"]:
                    result.evaluated.append(res["id"])  # its last checkpoint was final: only evaluated now
                else:
                    result.done.append(res["id"])
                m = res["metrics"]
                progress.finish(job.label, True, f"median {m.get('median_t', float('nan')):.3g} m / "
                                f"{m.get('median_r', float('nan')):.3g} deg", plan.images(job))
            else:
                retries = {"retries": res["retries"]} if "retries" in res else {}
                if store.record_failure(res["id"], res["error"], env_id=env, **retries):
                    result.kept.append(res["id"])
                result.failed[res["id"]] = res["error"]
                progress.finish(job.label, False, res["error"], plan.images(job))
    return deferred


def _trained_config(res: dict[str, Any]) -> dict[str, Any]:
    """The config a job really trained with (its thread count, kept from the run it resumed), as stored, and
    its Ray retries."""
    out: dict[str, Any] = {"retries": res["retries"]} if "retries" in res else {}
    if res.get("config"):
        out["config"] = json.dumps(res["config"], sort_keys=True, default=str)
    return out


def _short_label(job: Job) -> str:
    c = job.cfg
    return f"{c.arch} {'teacher' if job.kind == 'teacher' else job.method} {c.scene} s{c.seed}"
