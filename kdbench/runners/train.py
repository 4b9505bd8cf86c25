"""One training loop for teachers and students: plain, resumable, deterministic per (seed, epoch)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.config import TrainConfig, epoch_lr
from kdbench.errors import KdbenchError
from kdbench.fileio import read_torch_file, torch_save_atomic, write_json_atomic, write_text_atomic
from kdbench.methods import GroundTruth, LossContext, Method, PoseLoss, create_method
from kdbench.methods.contract import check_taps, check_terms
from kdbench.models import PoseNet, PoseOutput
from kdbench.models.bn_stats import recompute_bn_stats
from kdbench.progress import make_progress
from kdbench.runners.batches import make_batches
from kdbench.runners.checkpoints import DEFAULT_EVERY_S, CheckpointPolicy, StopSignals, TrainingStopped, load_weights
from kdbench.runners.device import pick_device, seed_everything
from kdbench.runners.evaluate import evaluate
from kdbench.runners.history import EpochLosses, HistoryLog
from kdbench.runners.precision import Precision
from kdbench.scenes.cache import SplitCache, load_split_cache
from kdbench.scenes.dataset import PoseDataset, rows_mean
from kdbench.scenes.validation import carve

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"


@dataclass
class TrainResult:
    """What a finished training run leaves: where, its metrics, and how long it took."""

    run_dir: Path
    checkpoint: Path
    metrics: dict[str, float]
    epochs_done: int
    train_seconds: float
    eval_seconds: float
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0  # fp16 steps skipped by loss scaling
    config: TrainConfig | None = None  # what trained, labels included (the thread count it ran with)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a kdbench checkpoint safely (weights_only=True), with a clear error for bad files."""
    ckpt = read_torch_file(path, "checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise KdbenchError(f"{path} is not a kdbench checkpoint (no model/config): was it written by kdbench train?")
    try:
        cfg = TrainConfig.from_dict(ckpt["config"])
    except (TypeError, AttributeError):
        required = [f.name for f in fields(TrainConfig) if f.default is MISSING and f.default_factory is MISSING]
        have = ckpt["config"] if isinstance(ckpt["config"], dict) else {}
        missing = [k for k in required if k not in have] or ["(malformed)"]
        raise KdbenchError(f"{path} is not a complete kdbench checkpoint: its config lacks {', '.join(missing)}; "
                           "use a checkpoint.pt written by `kdbench train` or `kdbench run`") from None
    ckpt.setdefault("hash", cfg.hash())
    ckpt.setdefault("arch", cfg.arch)
    return ckpt


def load_model(path: str | os.PathLike) -> tuple[PoseNet, TrainConfig]:
    """The PoseNet and config stored in a checkpoint."""
    return model_from_checkpoint(load_checkpoint(path), path)


def model_from_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike) -> tuple[PoseNet, TrainConfig]:
    """The PoseNet and config of a loaded checkpoint (one line when its weights do not fit its config)."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = PoseNet(cfg.arch)
    load_weights(model, ckpt["model"], path, cfg.arch)
    return model, cfg


def trained_data(ckpt: dict[str, Any]) -> str | None:
    """The data fingerprint a checkpoint's model was trained on (its config's, or recorded beside it)."""
    return (ckpt.get("config") or {}).get("data") or ckpt.get("data")


def _to_device(x: torch.Tensor, pose: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, GroundTruth]:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    pose = pose.to(device)
    return x, GroundTruth(pose[:, :3], pose[:, 3:])


def _set_frozen(student: PoseNet, names: list[str]) -> None:
    """requires_grad off and eval mode (BatchNorm statistics too) for the named student modules."""
    modules = dict(student.named_modules())
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    for name in names:
        if name not in modules:
            raise KdbenchError(f"method asked to freeze {name!r}, which is not a module of the student")
        modules[name].eval()
        for p in modules[name].parameters():
            p.requires_grad_(False)


def _teacher_batches(teacher: PoseNet, ds: PoseDataset, taps, device, batch_size: int
                     ) -> Iterator[tuple[PoseOutput, GroundTruth]]:
    with torch.no_grad():
        for x, pose in ds.batches(batch_size, shuffle=False):
            x, gt = _to_device(x, pose, device)
            yield teacher(x, taps=taps), gt


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's CPU thread count set to `n` for the block (restored after: a caller's own count is kept)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def training_threads(cfg: TrainConfig, resume: dict[str, Any] | None) -> int:
    """The CPU threads a job trains with: those its checkpoint recorded, else its config's, else torch's now.

    CPU results are bitwise reproducible only for a fixed thread count: a resumed job keeps the count it
    started with, whatever the rerun would choose.
    """
    recorded = (resume or {}).get("config", {}).get("threads")
    return int(recorded or cfg.threads or torch.get_num_threads())


def train(cfg: TrainConfig, data_root: str | os.PathLike | None, out_dir: str | os.PathLike,
          teacher_checkpoint: str | os.PathLike | None = None, quiet: bool = True, max_steps: int | None = None,
          device: str | None = None, on_epoch: Callable[[int, int, float], None] | None = None,
          checkpoint_every: float = DEFAULT_EVERY_S, data_path: str = "auto",
          data_share: float | None = None) -> TrainResult:
    """Train `cfg.arch` on `cfg.scene` with `cfg.method` in `cfg.precision`, then evaluate.

    Runs with `training_threads` torch CPU threads (recorded in the config as `threads`) and restores the
    caller's count after.

    Saves a checkpoint when `checkpoint_every` seconds passed since the last one, at the end, and on
    SIGINT/SIGTERM (then raises TrainingStopped). Resumes from `<out_dir>/checkpoint.pt` when it holds the
    same config, at the step where it stopped; a finished run is not redone. `data_path` is 'auto', 'device'
    or 'host' (runners/batches.py); `data_share` is the share of GPU memory the split may take on the device
    (default $KDBENCH_DEVICE_DATA_SHARE or 0.25). `max_steps` caps the optimiser steps per epoch (smoke tests).
    `on_epoch(epoch, epochs, loss)` reports progress to a caller that draws its own bars.
    """
    ckpt_path = Path(out_dir) / CHECKPOINT
    resume = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    threads = training_threads(cfg, resume)
    with torch_threads(threads):
        return _train(cfg.replace(threads=threads), resume, data_root, out_dir, teacher_checkpoint, quiet, max_steps,
                      device, on_epoch, checkpoint_every, data_path, data_share)


def _train(cfg: TrainConfig, resume: dict[str, Any] | None, data_root: str | os.PathLike | None,
           out_dir: str | os.PathLike, teacher_checkpoint: str | os.PathLike | None, quiet: bool,
           max_steps: int | None, device: str | None, on_epoch: Callable[[int, int, float], None] | None,
           checkpoint_every: float, data_path: str, data_share: float | None) -> TrainResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT
    dev = pick_device(device)
    seed_everything(cfg.seed)

    train_cache = load_split_cache(cfg.scene, data_root, "train", cfg.load_size, quiet)
    data = cfg.data or _data_fingerprint(cfg, data_root)  # recorded in checkpoints (evaluate compares it)
    train_cache, train_rows, val_rows = _training_part(cfg, train_cache)
    train_ds = PoseDataset(train_cache, cfg.crop_size, train=True, normalize=cfg.normalize, seed=cfg.seed,
                           rows=train_rows)
    eval_train_ds = PoseDataset(train_cache, cfg.crop_size, train=False, normalize=cfg.normalize, seed=cfg.seed,
                                rows=train_rows)
    method = create_method(cfg.method, cfg.method_params)
    policy = CheckpointPolicy(checkpoint_every)

    if resume is not None and resume.get("hash") != cfg.hash():
        raise KdbenchError(f"{ckpt_path} belongs to another configuration (hash {resume.get('hash')}, this job "
                           f"{cfg.hash()}): delete the folder {out} (or, with `kdbench train`, choose another --out)")
    student = PoseNet(cfg.arch, weights=None if resume else cfg.weights, head_init=cfg.head_init).to(dev)
    structure = _structure(student)  # a method's hooks may freeze modules, never replace one (checked below)
    teacher = _load_teacher(method, teacher_checkpoint, dev, cfg)
    pose_loss = PoseLoss(cfg.beta, cfg.learn_beta, form=cfg.pose_loss).to(dev)

    # Adaptors are sized from the first batch's features (eval mode: the probe must not move BN statistics).
    x0, pose0 = next(eval_train_ds.batches(min(cfg.batch_size, len(eval_train_ds)), shuffle=False))
    x0, _ = _to_device(x0, pose0, dev)
    student.eval()
    check_taps(method)
    with torch.no_grad():
        method.setup(student(x0, taps=method.student_taps()),
                     teacher(x0, taps=method.teacher_taps()) if teacher is not None else None)
    method.to(dev)
    _check_structure(cfg, student, structure, "setup()")

    params = list(student.parameters()) + list(method.parameters()) + list(pose_loss.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    precision = Precision(cfg.precision, dev)
    if dev.type == "cuda":
        student = student.to(memory_format=torch.channels_last)
    forward = torch.compile(student) if cfg.compile else student  # state_dicts come from `student` itself

    start_epoch, start_step, history, train_seconds, running = 0, 0, [], 0.0, None
    if resume is not None:
        student.load_state_dict(resume["model"])
        method.load_state_dict(resume["method"])
        pose_loss.load_state_dict(resume["pose_loss"])
        if "optimizer" in resume:  # a final checkpoint keeps no optimiser state (nothing resumes it)
            optimizer.load_state_dict(resume["optimizer"])
            precision.load_state_dict(resume.get("scaler"))
        start_epoch, start_step = int(resume["epoch"]), int(resume.get("step", 0))
        history, running = list(resume["history"]), resume.get("running")
        train_seconds = float(resume.get("train_seconds", 0.0))
    elif method.needs_prepare:
        prepare_ds = train_ds if method.prepare_crops() == "train" else eval_train_ds
        method.prepare(_teacher_batches(teacher, prepare_ds, method.teacher_taps(), dev, cfg.batch_size),
                       pose_loss)

    def save(epoch: int, step: int = 0, losses: EpochLosses | None = None, seconds: float = 0.0,
             skipped: int = 0) -> None:
        final = epoch == cfg.epochs
        state = {"model": student.state_dict(), "method": method.state_dict(), "pose_loss": pose_loss.state_dict(),
                 "epoch": epoch, "step": step, "history": history, "config": cfg.to_dict(), "hash": cfg.hash(),
                 "arch": cfg.arch, "train_seconds": train_seconds + seconds, "data": data}
        if not final:  # a finished job is never resumed (other settings are another job): weights only
            state.update(optimizer=optimizer.state_dict(), scaler=precision.state_dict())
        if step:  # mid-epoch: where the epoch stands, so that resuming continues it exactly
            state.update(rng=torch.get_rng_state(),
                         running={**losses.state_dict(), "seconds": seconds, "skipped": skipped},
                         cuda_rng=torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None)
        torch_save_atomic(state, ckpt_path)
        policy.saved()

    def check_finite(epoch: int, losses: EpochLosses) -> None:
        bad = losses.bad_step()
        if bad is not None:
            saved = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
            where = (f"the last good checkpoint (epoch {saved['epoch']}"
                     f"{', step ' + str(saved['step']) if saved.get('step') else ''}) is kept at {ckpt_path}"
                     if saved else "no checkpoint was saved before it")
            terms = ", ".join(f"{k[5:]}={v:.4g}" for k, v in losses.means().items() if k.startswith("loss_"))
            raise KdbenchError(
                f"non-finite loss at epoch {epoch + 1}, step {bad + 1} of {cfg.method} on {cfg.scene} "
                f"(epoch means {terms}); {where}. Lower --lr or the method's loss weights "
                "(--set METHOD.KEY=VALUE).")

    if start_epoch == 0 and not ckpt_path.is_file():
        write_json_atomic(out / "config.json", {**cfg.to_dict(), "hash": cfg.hash()})

    batches = make_batches(train_ds, dev, data_path, data_share)
    log = HistoryLog(out, start_epoch)
    try:
        with StopSignals() as stop, make_progress(quiet or on_epoch is not None) as progress:
            task = progress.add_task(f"{cfg.arch} {cfg.method} on {cfg.scene}", total=cfg.epochs,
                                     completed=start_epoch, info="")
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                first = start_step if epoch == start_epoch else 0
                losses = EpochLosses(dev, running if first else None)
                before = float(running["seconds"]) if first else 0.0
                if first:  # dropout continues the interrupted epoch's random stream
                    torch.set_rng_state(resume["rng"])
                    if dev.type == "cuda" and resume.get("cuda_rng") is not None:
                        torch.cuda.set_rng_state(resume["cuda_rng"], dev)
                else:
                    torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout: same per epoch, resumed or not
                lr = epoch_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
                for group in optimizer.param_groups:  # a function of (epoch, epochs): resume needs no state
                    group["lr"] = lr
                frozen = method.frozen(student, epoch, cfg.epochs)
                _check_structure(cfg, student, structure, "frozen()")
                _set_frozen(student, frozen)
                ctx = LossContext(pose_loss, epoch, cfg.epochs)
                plans = train_ds.epoch_plans(cfg.batch_size, shuffle=True, epoch=epoch, drop_last=True)
                plans = plans[:max_steps] if max_steps is not None else plans
                # precision.skipped counts from 0 in each process: carry an interrupted epoch's count over
                skipped_before = int(precision.skipped) - (int(running["skipped"]) if first else 0)
                for step, (x, pose) in enumerate(batches.iterate(plans[first:]), start=first):
                    gt = GroundTruth(pose[:, :3], pose[:, 3:])
                    with precision.autocast():
                        s_out = forward(x, taps=method.student_taps())
                        t_out = None
                        if teacher is not None:
                            with torch.no_grad():
                                t_out = teacher(x, taps=method.teacher_taps())
                        terms = method.loss(s_out, t_out, gt, ctx)
                        loss = check_terms(cfg.method, terms)
                    losses.add(step, loss, terms)
                    precision.step(loss, optimizer)
                    if step + 1 < len(plans) and (stop.requested or policy.due()):
                        check_finite(epoch, losses)
                        save(epoch, step + 1, losses, before + time.perf_counter() - t0,
                             int(precision.skipped) - skipped_before)
                        if stop.requested:
                            raise TrainingStopped(f"{stop.requested}: saved at epoch {epoch + 1}, step {step + 1}")
                check_finite(epoch, losses)
                _check_structure(cfg, student, structure, "loss()")
                seconds = before + time.perf_counter() - t0
                train_seconds += seconds
                skipped = int(precision.skipped) - skipped_before
                row = {"epoch": epoch + 1, **losses.means(), "lr": lr, "seconds": seconds, "steps": len(plans),
                       "skipped_steps": skipped}
                history.append(row)
                log.write(history)
                _check_not_all_skipped(cfg, history)
                if stop.requested or policy.due() or epoch + 1 == cfg.epochs:
                    save(epoch + 1)
                    if stop.requested:
                        raise TrainingStopped(f"{stop.requested}: saved at epoch {epoch + 1}")
                progress.update(task, advance=1, info=f"loss {row['loss']:.4g}")
                if on_epoch is not None:
                    on_epoch(epoch + 1, cfg.epochs, row["loss"])
    finally:
        batches.close()
        log.close()

    t0 = time.perf_counter()  # evaluation time, the BatchNorm recomputation included
    if cfg.bn_stats == "recompute":  # idempotent: a resumed finished job recomputes the same statistics
        recompute_bn_stats(student, (_to_device(x, pose, dev)[0] for x, pose in
                                     eval_train_ds.batches(cfg.batch_size, shuffle=False, drop_last=True)))
        save(cfg.epochs)  # the checkpoint holds the statistics the job is scored with
    if val_rows is not None:  # scored on the validation part of the train cache; the test split is never read
        eval_ds = PoseDataset(train_cache, cfg.crop_size, train=False, normalize=cfg.normalize, seed=cfg.seed,
                              rows=val_rows)
    else:
        test_cache = load_split_cache(cfg.scene, data_root, "test", cfg.load_size, quiet, train_mean=train_cache.mean)
        eval_ds = PoseDataset(test_cache, cfg.crop_size, train=False, normalize=cfg.normalize, seed=cfg.seed)
    metrics, predictions = evaluate(student, eval_ds, dev)
    eval_seconds = time.perf_counter() - t0
    write_text_atomic(out / PREDICTIONS, predictions.to_csv(index=False))
    write_json_atomic(out / METRICS, metrics)
    skipped = sum(int(h.get("skipped_steps", 0)) for h in history)
    return TrainResult(out, ckpt_path, metrics, cfg.epochs, train_seconds, eval_seconds, start_epoch, history,
                       skipped_steps=skipped, config=cfg)


def _data_fingerprint(cfg: TrainConfig, data_root: str | os.PathLike | None) -> str | None:
    from kdbench.scenes.cache import data_fingerprint

    try:
        return data_fingerprint(cfg.scene, data_root, cfg.load_size)
    except KdbenchError:  # the test split's cache is not built yet (a bare train() call)
        return None


def _structure(model: torch.nn.Module) -> list[tuple[str, str, int]]:
    """Every module's name and type, every parameter's name and identity: what a method must not change."""
    return [(n, type(m).__qualname__, 0) for n, m in model.named_modules()] + \
        [(n, "parameter", id(p)) for n, p in model.named_parameters()]


def _check_structure(cfg: TrainConfig, student: torch.nn.Module, before: list[tuple[str, str, int]],
                     hook: str) -> None:
    """A method that replaced a student layer trains parameters the optimiser never sees: fail the job."""
    now = _structure(student)
    if now == before:
        return
    was, have = {(n, k): t for n, k, t in before}, {(n, k): t for n, k, t in now}
    changed = sorted({n for n, k in was.keys() ^ have.keys()} | {n for n, k in was.keys() & have.keys()
                                                                  if was[n, k] != have[n, k]})
    raise KdbenchError(f"method {cfg.method!r} changed the student's modules in {hook} ({', '.join(changed[:3])}"
                       f"{' ...' if len(changed) > 3 else ''}): a method may name student modules to freeze "
                       "(frozen() returns their names) and build its own modules in setup(), but never replace, "
                       "add or remove the student's; the job is failed, not recorded")


def _training_part(cfg: TrainConfig, cache: SplitCache) -> tuple[SplitCache, np.ndarray | None, np.ndarray | None]:
    """The cache, training rows and scored rows of a job: all rows and None for test-scored jobs.

    A val-scored job trains on the train split minus its validation part (and gap) and is scored on that part;
    with 'mean' normalisation its mean image is that of the rows it trains on, so no validation frame leaks in.
    """
    if cfg.eval_split != "val":
        return cache, None, None
    split = carve(cache.image_paths, cfg.val_rule)
    if cfg.normalize == "mean":
        cache = replace(cache, mean=rows_mean(cache.images, split.train))
    return cache, split.train, split.val


def _check_not_all_skipped(cfg: TrainConfig, history: list[dict[str, float]]) -> None:
    """fp16 loss scaling skips steps whose gradients overflow; a run that never stepped is not a result."""
    steps = sum(int(h.get("steps", 0)) for h in history)
    skipped = sum(int(h.get("skipped_steps", 0)) for h in history)
    if cfg.precision == "fp16" and steps and skipped == steps and len(history) == cfg.epochs:
        raise KdbenchError(f"fp16 loss scaling skipped all {steps} optimiser steps of {cfg.arch} {cfg.method} on "
                           f"{cfg.scene} (the gradients overflowed at every scale): the model is untrained. "
                           "Use --precision bf16 or fp32.")


def _load_teacher(method: Method, teacher_checkpoint, dev: torch.device, cfg: TrainConfig) -> PoseNet | None:
    if not method.needs_teacher:
        return None
    if teacher_checkpoint is None:
        raise KdbenchError(f"method {method.name!r} needs a teacher: pass --teacher CHECKPOINT "
                           "(a checkpoint.pt written by `kdbench train`)")
    teacher, teacher_cfg = load_model(teacher_checkpoint)
    if cfg.eval_split == "val" and (teacher_cfg.eval_split, teacher_cfg.val_rule) != ("val", cfg.val_rule):
        # A teacher that trained on the validation frames would pass what it learnt there to the student.
        seen = "the whole training split" if teacher_cfg.eval_split != "val" else f"rule {teacher_cfg.val_rule}"
        raise KdbenchError(f"teacher {teacher_checkpoint} was trained on {seen}, so it has seen this student's "
                           f"validation frames ({cfg.val_rule}): train the teacher with the same validation split "
                           "(`kdbench train --eval-split val` for both; `kdbench tune` trains its teachers so)")
    teacher.eval().to(dev)
    for p in teacher.parameters():
        p.requires_grad_(False)
    if dev.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher
