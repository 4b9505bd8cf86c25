"""`kdbench train | evaluate | run | runs`: thin wrappers over the runners library."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kdbench.errors import KdbenchError

out_console = Console(width=160)


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}")
    out_console.print(table)


def cmd_train(args: argparse.Namespace) -> int:
    """Train and evaluate one model, writing checkpoint, config, metrics and predictions."""
    from kdbench.config import make_config
    from kdbench.methods import get_method, load_plugin, parse_set_args, resolved_params
    from kdbench.runners.train import load_checkpoint, train

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
                      learn_beta=args.learn_beta or None, weights=args.weights)
    out = Path(args.out) if args.out else Path("runs") / "train" / cfg.scene / (
        f"{cfg.arch}-{cfg.method}-seed{cfg.seed}-{cfg.hash()}")
    res = train(cfg, args.data_root, out, args.teacher, quiet=args.quiet)
    _print_metrics(f"{cfg.arch} {cfg.method} on {cfg.scene}: test split, last epoch ({res.epochs_done} epochs, "
                   f"{res.train_seconds:.0f} s)", res.metrics)
    print(f"run folder: {res.run_dir}\ncheckpoint: {res.checkpoint}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Re-evaluate a saved checkpoint on a scene's test split."""
    from kdbench.fileio import write_json_atomic, write_text_atomic
    from kdbench.runners.device import pick_device
    from kdbench.runners.evaluate import evaluate
    from kdbench.runners.train import load_model
    from kdbench.scenes import get_scene
    from kdbench.scenes.cache import load_split_cache
    from kdbench.scenes.dataset import PoseDataset

    model, cfg = load_model(args.checkpoint)
    spec = get_scene(args.scene)
    cache = load_split_cache(spec, args.data_root, "test", cfg.load_size, args.quiet)
    ds = PoseDataset(cache, cfg.crop_size, train=False, normalize=cfg.normalize, seed=cfg.seed)
    dev = pick_device()
    metrics, predictions = evaluate(model.to(dev), ds, dev)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval-{spec.name}"
    write_text_atomic(out / "predictions.csv", predictions.to_csv(index=False))
    write_json_atomic(out / "metrics.json", metrics)
    _print_metrics(f"{cfg.arch} {cfg.method} on {spec.name} (test split)", metrics)
    print(f"written to {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the leaderboard and a summary of failures (non-zero exit if any)."""
    from kdbench.runners.benchmark import run_benchmark

    res = run_benchmark(methods=args.methods, scenes=args.scenes, seeds=args.seeds, teacher_arch=args.teacher_arch,
                        student_arch=args.student_arch, preset=args.preset, sets=args.sets, plugins=args.plugin,
                        executor=args.executor, address=args.address, runs_dir=args.runs_dir,
                        data_root=args.data_root, quiet=args.quiet, epochs=args.epochs, batch_size=args.batch_size,
                        load_size=args.load_size, crop_size=args.crop)
    print_leaderboard(args.runs_dir, args.scenes)
    print(f"{len(res.jobs)} jobs: {len(res.done)} trained now, {len(res.reused)} reused, {len(res.failed)} failed "
          f"({res.seconds:.0f} s). Store: {res.store_path}")
    if res.failed:
        print("failed jobs:")
        for job_id, error in res.failed.items():
            print(f"  {job_id}: {error}")
        return 1
    return 0


def print_leaderboard(runs_dir: str, scenes: str | None) -> None:
    """The leaderboard of the results store: rich tables on a terminal, markdown when piped."""
    import sys

    from kdbench.reports.leaderboard import load_profiles, load_results, render

    fmt = "terminal" if sys.stdout.isatty() else "markdown"
    print(render(load_results(runs_dir, scenes), load_profiles(runs_dir), fmt=fmt))


def cmd_runs(args: argparse.Namespace) -> int:
    """List the jobs in the results store."""
    from kdbench.reports.store import ResultsStore

    store = ResultsStore(args.runs_dir, create=False)
    try:
        rows = store.jobs(args.status)
        table = Table(title=f"jobs in {store.path}" + (f" ({args.status})" if args.status else ""))
        for col in ("id", "kind", "scene", "method", "arch", "seed", "status", "median t/r", "error"):
            table.add_column(col)
        for r in rows:
            m = store.metrics(r["id"])
            tr = f"{m['median_t']:.3g} m / {m['median_r']:.3g}°" if "median_t" in m else ""
            table.add_row(r["id"], r["kind"], r["scene"], r["method"], r["arch"], str(r["seed"]), r["status"], tr,
                          (r["error"] or "")[:80])
        out_console.print(table)
    finally:
        store.close()
    return 0
