"""`kdbench export`: trained teachers and students to ONNX, checked against torch, with their input contract.

What a Jetson user needs is the trained model, not an architecture: the weights of a checkpoint in eval mode
(dropout off, BatchNorm running statistics), exported by kdbench.profile.export_onnx and accepted only when
onnxruntime's outputs match torch's (kdbench.profile.check_onnx_parity). Beside every FILE.onnx a FILE.json
says what the model is (job id, scene, method, role, arch, seed, metrics) and what it expects as input
(crop, resize, channel order, normalisation); the same facts are in the ONNX file's metadata, so a bare
.onnx still says them. A file is written only after its parity check passed (atomic rename).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.fileio import ensure_dir, write_json_atomic

FORMATS = ("onnx",)
SIDECAR_FORMAT = "kdbench-onnx-export"
DEFAULT_DIR = "onnx"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # of 0-1 RGB pixels, as kdbench.scenes.dataset normalises them
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Source:
    """A checkpoint to export and what the store knows about it (None when it came as a bare path)."""

    checkpoint: Path
    job: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None


@dataclass(frozen=True)
class Exported:
    """One written model: the .onnx file, its sidecar JSON, and the parity check's worst difference."""

    onnx: Path
    sidecar: Path
    max_abs_diff: float
    contract: dict[str, Any]
    epoch: int
    epochs: int


# finding checkpoints ------------------------------------------------------------------------------------
def resolve_target(target: str, runs_dir: str | os.PathLike) -> Source:
    """A checkpoint file, a run folder holding checkpoint.pt, or a job id (or unique prefix) in the store."""
    from kdbench.runners.train import CHECKPOINT

    path = Path(target).expanduser()
    if path.is_file():
        return Source(path, metrics=_folder_metrics(path.parent))
    if path.is_dir():
        if not (path / CHECKPOINT).is_file():
            raise KdbenchError(f"run folder {path} has no {CHECKPOINT}: pass a folder written by `kdbench train` "
                               f"or `kdbench run`, or the checkpoint file itself")
        return Source(path / CHECKPOINT, metrics=_folder_metrics(path))
    return _job_source(target, runs_dir)


def _job_source(job_id: str, runs_dir: str | os.PathLike) -> Source:
    from kdbench.reports.store import STORE_NAME, ResultsStore

    store_path = Path(runs_dir) / STORE_NAME
    if not store_path.is_file():
        raise KdbenchError(f"{job_id!r} is not a checkpoint file or run folder, and there is no results store at "
                           f"{store_path} to look it up as a job id: pass a checkpoint.pt, a run folder, or "
                           f"--runs-dir DIR")
    with ResultsStore(runs_dir, create=False) as store:
        matches = [j for j in store.jobs() if j["id"].startswith(job_id)] if len(job_id) >= 4 else []
        if len(matches) != 1:
            found = ", ".join(j["id"] for j in matches[:5])
            raise KdbenchError(f"{job_id!r} is not a checkpoint file, a run folder, or "
                               + (f"a unique job id in {store_path} (matches {found})" if matches else
                                  f"a job id in {store_path}") + ": `kdbench runs` lists the job ids")
        job = matches[0]
        metrics = store.metrics(job["id"])
    if job["status"] != "done":
        raise KdbenchError(f"job {job['id']} is {job['status']}, not done: only finished models are exported "
                           f"(rerun `kdbench run` to finish it)")
    return Source(job_checkpoint(job, runs_dir), job, metrics or None)


def job_checkpoint(job: dict[str, Any], runs_dir: str | os.PathLike) -> Path:
    """The checkpoint of a job row: its run_dir under the runs folder (or as stored, when absolute)."""
    from kdbench.runners.train import CHECKPOINT

    run_dir = Path(job["run_dir"] or "")
    candidates = [run_dir] if run_dir.is_absolute() else [Path(runs_dir) / run_dir, run_dir]
    for folder in candidates:
        if (folder / CHECKPOINT).is_file():
            return folder / CHECKPOINT
    raise KdbenchError(f"job {job['id']}'s checkpoint {candidates[0] / CHECKPOINT} does not exist: was the runs "
                       f"folder moved? Pass --runs-dir, or the checkpoint path itself")


def _folder_metrics(folder: Path) -> dict[str, float] | None:
    from kdbench.runners.train import METRICS

    path = folder / METRICS
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None  # metrics are a courtesy in the sidecar; a broken file must not stop the export


def leaderboard_students(runs_dir: str | os.PathLike, scenes: str | None = None,
                         preset: str | None = None, skipped: list[str] | None = None) -> list[Source]:
    """The students the leaderboard shows (finished, latest rerun, one preset), each with its metrics.

    A student whose checkpoint is gone (its result stays on the leaderboard) is left out, and why is
    appended to `skipped` when given (else it is an error).
    """
    from kdbench.reports.leaderboard import load_results, shown_jobs
    from kdbench.reports.store import ResultsStore

    jobs = shown_jobs(load_results(runs_dir, scenes, preset))
    jobs = jobs[jobs["role"] == "student"]
    sources = []
    with ResultsStore(runs_dir, create=False) as store:
        for job_id in jobs["id"]:
            job = store.get_job(job_id)
            try:
                sources.append(Source(job_checkpoint(job, runs_dir), job, store.metrics(job_id) or None))
            except KdbenchError as exc:
                if skipped is None:
                    raise
                skipped.append(f"{job.get('method')} on {job.get('scene')} (seed {job.get('seed')}): {exc}")
    if not sources and skipped:
        raise KdbenchError(f"none of the {len(skipped)} leaderboard students has its checkpoint: {skipped[0]}")
    if not sources:
        raise KdbenchError(f"no finished students in {Path(runs_dir) / 'results.sqlite'}"
                           + (f" for scenes {scenes}" if scenes else "") + ": run `kdbench run` first")
    return sources


# exporting ----------------------------------------------------------------------------------------------
def default_name(cfg, label: str | None = None) -> str:
    """'SynthRoom-resnet18-sckd-seed0' for a student, 'SynthRoom-resnet34-teacher-seed0' for a teacher.

    `label` is the store's method column (a variant such as 'sckd:alpha=0'); characters that some file
    systems refuse become '_'.
    """
    what = "teacher" if cfg.role == "teacher" else (label or cfg.method)
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", f"{cfg.scene}-{cfg.arch}-{what}-seed{cfg.seed}")


def input_contract(cfg, batch: int) -> dict[str, Any]:
    """What the exported model expects: shape, layout, channel order, resize, crop and normalisation."""
    contract: dict[str, Any] = {
        "name": "image", "shape": [batch, 3, cfg.crop_size, cfg.crop_size], "dtype": "float32", "layout": "NCHW",
        "channels": "RGB", "resize": f"short side to {cfg.load_size} px (bilinear)",
        "crop": f"centre {cfg.crop_size}x{cfg.crop_size}", "normalize": cfg.normalize}
    if cfg.normalize == "imagenet":
        contract.update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                        formula="(pixel / 255 - mean) / std, per channel")
    else:  # mean: / 255; sckd: SCKD's 0-255 scale, no division
        scale = " / 255" if cfg.normalize == "mean" else " (0-255 scale, no /255, no std)"
        contract.update(formula=f"(pixel - mean_image){scale}, mean_image = the train split's mean image "
                                f"(<scene>/.kdbench-cache/train-{cfg.load_size}/split_mean.npy), centre-cropped "
                                "like the input")
    return contract


def export_checkpoint(source: Source, out: str | os.PathLike, batch: int = 1) -> Exported:
    """Export one checkpoint's trained model (eval mode) to `out` (.onnx) plus `out` with .json, parity-checked."""
    import torch

    import kdbench
    from kdbench.config import TrainConfig
    from kdbench.models import PoseNet
    from kdbench.profile import PARITY_ATOL, check_onnx_parity, export_onnx
    from kdbench.runners.checkpoints import load_weights
    from kdbench.runners.train import load_checkpoint

    if batch < 1:
        raise KdbenchError(f"--batch {batch}: use 1 or more")
    out = Path(out)
    if out.suffix != ".onnx":
        raise KdbenchError(f"--out {out}: an exported model's file name ends in .onnx (or give a folder, "
                           f"ending in /)")
    ckpt = load_checkpoint(source.checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = PoseNet(cfg.arch)
    load_weights(model, ckpt["model"], source.checkpoint, cfg.arch)
    model.eval()  # the trained model as evaluated: dropout off, BatchNorm running statistics
    contract = input_contract(cfg, batch)
    epoch = int(ckpt.get("epoch", cfg.epochs))
    meta = {"kdbench.job_id": cfg.hash(), "kdbench.scene": cfg.scene, "kdbench.method": cfg.method,
            "kdbench.role": cfg.role, "kdbench.seed": str(cfg.seed), "kdbench.epoch": f"{epoch}/{cfg.epochs}",
            "kdbench.input": json.dumps(contract, sort_keys=True)}
    ensure_dir(out.parent, "--out folder")
    # Export and check in a temporary folder beside the target: a model that fails parity never lands at `out`.
    with tempfile.TemporaryDirectory(prefix=f".{out.stem}.", dir=out.parent) as tmp:
        tmp_file = export_onnx(model, Path(tmp) / out.name, batch, cfg.crop_size, metadata=meta)
        diff = check_onnx_parity(model, tmp_file, batch, cfg.crop_size)
        os.replace(tmp_file, out)
    sidecar = out.with_suffix(".json")
    job = source.job or {}
    write_json_atomic(sidecar, {
        "format": SIDECAR_FORMAT, "version": 1, "onnx": out.name, "checkpoint": str(source.checkpoint),
        "job_id": cfg.hash(), "scene": cfg.scene, "role": cfg.role, "method": cfg.method,
        "leaderboard_row": job.get("method") or cfg.method, "arch": cfg.arch,
        "seed": cfg.seed, "preset": cfg.preset, "teacher_arch": cfg.teacher_arch, "teacher_id": cfg.teacher_hash,
        "method_params": cfg.method_params, "epoch": epoch, "epochs": cfg.epochs,
        "status": job.get("status"), "metrics": source.metrics,
        "input": contract,
        "outputs": {"xyz": f"[{batch}, 3] camera position (m), in the scene's label frame",
                    "q": f"[{batch}, 4] unit quaternion (w, x, y, z), in the scene's label convention"},
        "parity": {"max_abs_diff": diff, "atol": PARITY_ATOL, "checked_with": "onnxruntime CPUExecutionProvider"},
        "kdbench_version": kdbench.__version__, "torch": torch.__version__})
    return Exported(out, sidecar, diff, contract, epoch, cfg.epochs)


def output_paths(sources: list[Source], out_dir: Path) -> list[Path]:
    """One .onnx path per source in `out_dir`; names that would collide get the job id appended."""
    cfgs = [source_config(s) for s in sources]
    names = [default_name(c, (s.job or {}).get("method")) for s, c in zip(sources, cfgs)]
    return [out_dir / (f"{n}-{c.hash()}.onnx" if names.count(n) > 1 else f"{n}.onnx") for n, c in zip(names, cfgs)]


def source_config(source: Source):
    """The TrainConfig of a source: from the store's job row when known, else from the checkpoint."""
    from kdbench.config import TrainConfig
    from kdbench.runners.train import load_checkpoint

    if source.job and source.job.get("config"):
        return TrainConfig.from_dict(json.loads(source.job["config"]))
    return TrainConfig.from_dict(load_checkpoint(source.checkpoint)["config"])


def _describe(result: Exported, source: Source) -> str:
    c = result.contract
    norm = "ImageNet-normalised" if c["normalize"] == "imagenet" else "mean-image-subtracted"
    what = f"job {source.job['id']}" if source.job else str(source.checkpoint)
    return (f"wrote {result.onnx} ({what}; input {'x'.join(map(str, c['shape']))} float32 {norm} RGB; "
            f"max |torch - onnxruntime| {result.max_abs_diff:.1e})\nwrote {result.sidecar} (input contract, "
            f"job, metrics)")


def cmd_export(args: argparse.Namespace) -> int:
    """`kdbench export TARGET | --all-students`: write ONNX models and sidecars, print every path."""
    if args.format not in FORMATS:
        raise KdbenchError(f"--format {args.format}: kdbench exports {', '.join(FORMATS)}")
    if args.all_students == bool(args.target):
        raise KdbenchError("pass either a checkpoint / run folder / job id, or --all-students (not both)")
    if args.all_students:
        skipped: list[str] = []
        sources = leaderboard_students(args.runs_dir, args.scenes, args.preset, skipped)
        for why in skipped:
            print(f"kdbench: warning: skipped {why}", file=sys.stderr)
        out_dir = Path(args.out or DEFAULT_DIR)
        if out_dir.suffix == ".onnx":
            raise KdbenchError(f"--out {out_dir}: --all-students writes several models, give a folder")
        outs = output_paths(sources, out_dir)
    else:
        sources = [resolve_target(args.target, args.runs_dir)]
        to_dir = not args.out or args.out.endswith(("/", os.sep)) or Path(args.out).is_dir()
        outs = output_paths(sources, Path(args.out or DEFAULT_DIR)) if to_dir else [Path(args.out)]
    for source, out in zip(sources, outs):
        result = export_checkpoint(source, out, args.batch)
        print(_describe(result, source))
        if result.epoch < result.epochs:
            print(f"kdbench: warning: {source.checkpoint} holds epoch {result.epoch} of {result.epochs}: an "
                  f"unfinished model")
    return 0
