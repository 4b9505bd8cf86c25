"""`kdbench train | evaluate | run | runs`: thin wrappers over the runners library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kdbench.config import ROLE_FIELDS, ROLES
from kdbench.errors import KdbenchError

out_console = Console(width=160)


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    out_console.print(title, highlight=False, markup=False)  # a long title above the table, not squeezed into it
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}")
    out_console.print(table)


def _check_file(path: str | None, what: str, fix: str) -> None:
    # Before anything imports torch: a typo in a path is reported in a fraction of a second.
    if path is not None and Path(path).expanduser().is_dir():
        inside = Path(path).expanduser() / "checkpoint.pt"
        raise KdbenchError(f"{what} {path} is a folder, not a file: "
                           + (f"pass {inside}" if inside.is_file() else fix))
    if path is not None and not Path(path).expanduser().is_file():
        raise KdbenchError(f"{what} {path} does not exist: {fix}")


def cmd_train(args: argparse.Namespace) -> int:
    """Train and evaluate one model, writing checkpoint, config, metrics and predictions; record it in the store."""
    _check_file(args.teacher, "teacher checkpoint", "pass --teacher path/to/checkpoint.pt (written by kdbench "
                "train or run)")
    from kdbench.models.families import check_arch
    from kdbench.runners.preflight import check_checkpoint_every, check_weights_keys, parse_weights, weights_for

    check_arch(args.arch)
    check_checkpoint_every(args.checkpoint_every)
    weights = parse_weights(args.weights)
    check_weights_keys(weights, {args.arch})
    weights = weights_for(weights, args.arch)
    if weights not in (None, "imagenet", "none"):
        _check_file(weights, "--weights file", "pass an existing state_dict PATH, imagenet, or none")

    from kdbench.config import make_config
    from kdbench.methods import get_method, load_plugin, parse_set_args, resolved_params
    from kdbench.progress import JobProgress
    from kdbench.runners.precision import resolve_precision
    from kdbench.runners.preflight import check_device
    from kdbench.runners.train import load_checkpoint, train

    device = check_device(args.device)
    for p in args.plugin:
        load_plugin(p)
    sets = parse_set_args(args.sets)
    other = sorted(set(sets) - {args.method})
    if other:
        raise KdbenchError(f"--set names method(s) {', '.join(other)} but this run trains {args.method!r}")
    params = resolved_params(args.method, sets.get(args.method))
    teacher_hash = teacher_arch = None
    if args.teacher:
        ckpt = load_checkpoint(args.teacher)
        teacher_hash, teacher_arch = ckpt["hash"], ckpt["arch"]
    elif get_method(args.method).needs_teacher:
        raise KdbenchError(f"method {args.method!r} needs a teacher: pass --teacher CHECKPOINT")
    role = args.role or ("student" if args.teacher else "teacher")
    cfg = make_config(args.scene, args.arch, args.preset, role=role, seed=args.seed, method=args.method,
                      method_params=params, teacher_hash=teacher_hash, teacher_arch=teacher_arch,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, beta=args.beta,
                      learn_beta=args.learn_beta or None, weights=weights,
                      precision=resolve_precision(args.precision, device), compile=args.compile or None,
                      load_size=args.load_size, crop_size=args.crop, eval_split=args.eval_split,
                      **preset_overrides(args))
    out = Path(args.out) if args.out else Path(args.runs_dir) / "train" / cfg.scene / (
        f"{cfg.arch}-{cfg.method}-seed{cfg.seed}-{cfg.hash()}")
    from kdbench.runners.benchmark import frame_counts
    from kdbench.scenes.cache import prepare_scene
    from kdbench.scenes.catalog import get_scene

    prepare_scene(cfg.scene, args.data_root, load_size=cfg.load_size, quiet=args.quiet)  # its bars come first
    record = _TrainRecord(args.runs_dir, cfg, out, device)
    n_train = frame_counts(get_scene(cfg.scene), args.data_root)[0]
    label = f"{role} {cfg.arch} {cfg.method} on {cfg.scene} (seed {cfg.seed})"
    try:
        with JobProgress(1, n_train * cfg.epochs, args.quiet) as progress:
            progress.start(label, cfg.epochs, n_train * cfg.epochs, short=f"{cfg.arch} {cfg.method} {cfg.scene}")
            res = train(cfg, args.data_root, out, args.teacher, quiet=args.quiet, device=device,
                        on_epoch=progress.epoch, checkpoint_every=args.checkpoint_every)
            progress.finish(label, True)
    except KdbenchError as exc:
        record.failed(str(exc))
        raise
    record.done(res)
    scored = "test split" if cfg.eval_split == "test" else f"validation split ({cfg.val_rule})"
    _print_metrics(f"{cfg.arch} {cfg.method} on {cfg.scene}: {scored}, last epoch ({res.epochs_done} epochs, "
                   f"{res.train_seconds:.0f} s)", res.metrics)
    print(f"run folder: {res.run_dir}\ncheckpoint: {res.checkpoint}\nrecorded in {record.store_path} "
          f"(job {cfg.hash()}; `kdbench runs --runs-dir {args.runs_dir}`)")
    return 0


class _TrainRecord:
    """A `kdbench train` job in the results store: kind teacher/student like a run's, marked origin=train."""

    def __init__(self, runs_dir: str, cfg, out: Path, device: str | None):
        from kdbench.reports.store import ResultsStore
        from kdbench.runners.environment import environment

        self.runs_dir, self.cfg, self.id = Path(runs_dir), cfg, cfg.hash()
        try:
            run_dir = str(out.resolve().relative_to(self.runs_dir.resolve()))
        except ValueError:  # --out outside the runs folder: keep where it is
            run_dir = str(out.resolve())
        with ResultsStore(runs_dir) as store:
            self.store_path = store.path
            self.env_id = store.add_environment(environment(device))
            row = store.get_job(self.id)
            self.keep_done = bool(row and row["status"] == "done")  # never mark finished work as failed
            if not self.keep_done:
                store.upsert_job(self._row(run_dir, "running"))
        self.run_dir = run_dir

    def _row(self, run_dir: str, status: str) -> dict:
        c = self.cfg
        return {"id": self.id, "kind": c.role, "scene": c.scene, "method": c.method, "arch": c.arch,
                "teacher_arch": c.teacher_arch, "teacher_id": c.teacher_hash, "seed": c.seed, "preset": c.preset,
                "params": c.method_params, "config": {**c.to_dict(), "origin": "train"}, "status": status,
                "run_dir": run_dir, "env_id": self.env_id}

    def failed(self, error: str) -> None:
        from kdbench.reports.store import ResultsStore

        if not self.keep_done:
            with ResultsStore(self.runs_dir) as store:
                store.upsert_job({**self._row(self.run_dir, "failed"), "error": error})

    def done(self, res) -> None:
        from kdbench.reports.store import ResultsStore

        self.cfg = res.config or self.cfg  # as trained: its thread count included
        with ResultsStore(self.runs_dir) as store:
            store.upsert_job(self._row(self.run_dir, "running"))
            store.finish_job(self.id, res.metrics, checkpoint=str(Path(self.run_dir) / "checkpoint.pt"),
                             epochs_done=res.epochs_done, train_seconds=res.train_seconds,
                             eval_seconds=res.eval_seconds, env_id=self.env_id)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Re-evaluate a saved checkpoint on the test split of the scene it was trained on (or, asked, another)."""
    _check_file(args.checkpoint, "checkpoint", "pass a checkpoint.pt written by kdbench train or run")
    from kdbench.fileio import write_json_atomic, write_text_atomic
    from kdbench.progress import step
    from kdbench.runners.evaluate import evaluate
    from kdbench.runners.preflight import check_device
    from kdbench.runners.train import load_checkpoint, model_from_checkpoint
    from kdbench.scenes import get_scene
    from kdbench.scenes.cache import load_split_cache
    from kdbench.scenes.dataset import PoseDataset

    device = check_device(args.device)
    ckpt = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(ckpt, args.checkpoint)
    spec = get_scene(args.scene or cfg.scene)
    if spec.name != get_scene(cfg.scene).name and not args.other_scene:
        raise KdbenchError(f"{args.checkpoint} was trained on {cfg.scene}, not {spec.name}: a pose regressor "
                           f"only knows its own scene. Drop --scene to evaluate on {cfg.scene}, or add "
                           "--other-scene to score it on another scene on purpose")
    cache = load_split_cache(spec, args.data_root, "test", cfg.load_size, args.quiet)
    if spec.name == get_scene(cfg.scene).name:
        _say_if_data_changed(ckpt, spec, args.data_root, cfg.load_size)
    ds = PoseDataset(cache, cfg.crop_size, train=False, normalize=cfg.normalize, seed=cfg.seed)
    from kdbench.runners.device import pick_device

    dev = pick_device(device)
    with step(f"evaluating {cfg.arch} {cfg.method} on {spec.name} ({len(ds)} test images, {dev})", args.quiet):
        metrics, predictions = evaluate(model.to(dev), ds, dev)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{spec.name}"
    write_text_atomic(out / "predictions.csv", predictions.to_csv(index=False))
    write_json_atomic(out / "metrics.json", metrics)
    other = f", trained on {cfg.scene}" if spec.name != cfg.scene else ""
    _print_metrics(f"{cfg.arch} {cfg.method} on {spec.name} (test split{other})", metrics)
    print(f"written to {out}")
    return 0


def preset_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The preset fields `train` and `run` both take as flags (None: the preset's)."""
    return {k: getattr(args, k) for k in ("weight_decay", "adam_eps", "pose_loss", "head_init", "normalize",
                                          "lr_schedule", "bn_stats")}


def _say_if_data_changed(ckpt: dict, spec, data_root: str | None, load_size: int) -> None:
    """One line on stderr when the scene's data is no longer what the checkpoint's model was trained on."""
    from kdbench.runners.train import trained_data
    from kdbench.scenes.cache import data_fingerprint

    then, now = trained_data(ckpt), data_fingerprint(spec, data_root, load_size)
    if then and then != now:
        print(f"kdbench: note: the data of {spec.name} changed since this model was trained (fingerprint {then} "
              f"then, {now} now: labels or images were edited, added or replaced); these metrics score the old "
              "model on the new data. Rerun `kdbench run` (changed data is a new job) or `kdbench train` to "
              "train on the current data.", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the leaderboard and a summary of failures (non-zero exit if any)."""
    from kdbench.runners.benchmark import preflight_benchmark, run_benchmark

    crossed = args.teacher_seeds is not None or args.student_seeds is not None
    if args.seeds is None and not crossed:
        args.seeds = "3"  # the default, resolved here so that --seeds with the crossed flags is an error
    options = dict(methods=args.methods, scenes=args.scenes, seeds=args.seeds, teacher_seeds=args.teacher_seeds,
                   student_seeds=args.student_seeds, teacher_arch=args.teacher_arch,
                   student_arch=args.student_arch, preset=args.preset, sets=args.sets, plugins=args.plugin,
                   executor=args.executor, data_root=args.data_root, epochs=args.epochs,
                   batch_size=args.batch_size, load_size=args.load_size, crop_size=args.crop, weights=args.weights,
                   lr=args.lr, beta=args.beta, **preset_overrides(args),
                   **{f"{r}_{k}": getattr(args, f"{r}_{k}") for r in ROLES for k in ROLE_FIELDS},
                   compile=args.compile or None, device=args.device, precision=args.precision,
                   jobs_per_gpu=args.jobs_per_gpu, checkpoint_every=args.checkpoint_every)
    from kdbench.runners.tuned import tuned_items, tuned_planner

    rows, hparams = tuned_items(args.methods, getattr(args, "hparams", None), args.runs_dir)
    if hparams:  # rows trained with the values `kdbench tune` chose
        options.update(planner=tuned_planner(rows, hparams))
    # The checks of the real run, before its first job (a dry run fetches no weights): the plan shows the
    # configs that will really train, and whatever the run would reject, the dry run rejects.
    plan = preflight_benchmark(**options, runs_dir=args.runs_dir, fetch=False)[0]
    if args.dry_run:
        from kdbench.runners.dryrun import print_dry_run

        print_dry_run(plan, args.runs_dir, args.data_root)
        return 0
    from kdbench.cli import build_parser, subparser
    from kdbench.runners.benchconfig import write_resolved_config

    try:
        written = write_resolved_config(subparser(build_parser(), "run"), args, args.runs_dir)
        if not args.quiet:
            print(f"options of this run: {written}", file=sys.stderr)
    except KdbenchError as exc:  # a record of the options, not a result: a run with nothing to write goes on
        print(f"kdbench: warning: the options of this run were not recorded: {exc}", file=sys.stderr)
    res = run_benchmark(address=args.address, runs_dir=args.runs_dir, quiet=args.quiet,
                        rebuild=args.rebuild_store, **options)
    print_leaderboard(args.runs_dir, args.scenes, [job.id for job in res.jobs])  # what this run was asked
    print(run_summary(res))
    if res.failed:
        print("failed jobs:")
        for job_id, error in res.failed.items():
            kept = " (its earlier finished result is kept)" if job_id in res.kept else ""
            print(f"  {job_id}: {error}{kept}")
        return 1
    return 0


def run_summary(res) -> str:
    """What a run did, in a few lines: trained, evaluated, reused, failed, repaired, superseded."""
    elsewhere = len(res.elsewhere & set(res.reused))
    parts = [f"{len(res.done)} trained now"]
    if res.evaluated:
        parts.append(f"{len(res.evaluated)} evaluated from a finished checkpoint")
    parts.append(f"{len(res.reused)} reused" + (f" ({elsewhere} finished by another kdbench run)" if elsewhere
                                                else ""))
    parts.append(f"{len(res.failed)} failed")
    lines = [f"{len(res.jobs)} jobs: {', '.join(parts)} ({res.seconds:.0f} s). Store: {res.store_path}"]
    if res.rebuilt:
        aside, n = res.rebuilt
        lines.append(f"rebuilt the results store from {n} finished run folder(s)"
                     + (f"; the old file is kept as {aside}" if aside else ""))
    lines += [f"repaired: {why}" for why in res.repaired.values()]
    if res.superseded:
        lines.append(f"{len(res.superseded)} earlier result(s) of the same method, scene and seed (other data or "
                     "configuration) are marked superseded; they stay in the store (`kdbench runs --status "
                     "superseded`)")
    return "\n".join(lines)


def print_leaderboard(runs_dir: str, scenes: str | None, job_ids: list[str] | None = None) -> None:
    """The leaderboard of `job_ids` (default: the whole store): rich tables at the terminal's width on a
    terminal, markdown when piped."""
    from kdbench.reports.leaderboard import load_profiles, load_results, print_terminal, render

    df, profiles = load_results(runs_dir, scenes, job_ids=job_ids), load_profiles(runs_dir)
    if sys.stdout.isatty():
        print_terminal(df, profiles)
    else:
        print(render(df, profiles, fmt="markdown"))


def cmd_runs(args: argparse.Namespace) -> int:
    """List the jobs in the results store."""
    from kdbench.reports.store import ResultsStore

    store = ResultsStore(args.runs_dir, create=False)
    try:
        rows = store.jobs(args.status)
        table = Table(title=f"jobs in {store.path}" + (f" ({args.status})" if args.status else ""))
        for col in ("id", "kind", "from", "scene", "method", "arch", "seed", "split", "status", "median t/r",
                    "error"):
            table.add_column(col)
        for r in rows:
            m = store.metrics(r["id"])
            tr = f"{m['median_t']:.3g} m / {m['median_r']:.3g}°" if "median_t" in m else ""
            error = r["error"] or (f"a rerun failed: {r['last_error']}" if r.get("last_error") else "")
            table.add_row(r["id"], r["kind"], _origin(r), r["scene"], r["method"], r["arch"], str(r["seed"]),
                          r.get("eval_split") or "test", r["status"], tr, error[:80])
        out_console.print(table)
    finally:
        store.close()
    return 0


def _origin(row: dict) -> str:
    """`train` for jobs recorded by `kdbench train`, `run` for the benchmark's."""
    try:
        return json.loads(row["config"] or "{}").get("origin", "run")
    except (TypeError, ValueError):
        return "run"
