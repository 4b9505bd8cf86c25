"""Typed training configuration, presets, and the stable config hash that names finished work."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from kdbench.errors import KdbenchError

LR_SCHEDULES = ("constant", "cosine")
ROLES = ("teacher", "student")
POSE_LOSS_FORMS = ("sum", "mean")  # sum: ||x - x'||^2 + beta ||q - q'||^2; mean: SCKD/poselstm's nn.MSELoss
HEAD_INITS = ("torchvision", "sckd")  # sckd: head N(0, 0.01), xyz output N(0, 0.5) (poselstm's init)
NORMALIZATIONS = ("imagenet", "mean", "sckd")  # see kdbench.scenes.dataset.normalize_batch
BN_STATS = ("running", "recompute")  # see TrainConfig.bn_stats
PRECISIONS = ("fp32", "bf16", "fp16")  # what a job trains in; "auto" is resolved per device before hashing

# Identity rules. A field added after v0.2 gets a default that reproduces what jobs did before it existed,
# and is registered here: at that value it is left out of the hash, so every stored result keeps its id and
# its meaning; any other value is a different job. Fields in LABEL_FIELDS are recorded (config.json, the
# store) but never hashed: they name or describe a job without changing what it computes.
# A method hyperparameter added later (HParam(..., added_later=True)) is registered the same way, per method,
# when its method is registered.
LEGACY_DEFAULTS: dict[str, Any] = {"eval_split": "test", "teacher_seed": None, "val_rule": None,
                                   "bn_stats": "running"}
LEGACY_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {}
LABEL_FIELDS: tuple[str, ...] = ("preset", "method_label", "threads", "tuning")
EVAL_SPLITS = ("test", "val")  # test: train on train, score on test; val: train on train minus val, score on val
# `kdbench tune`'s studies (written by runners/tune.py, read by reports/tuning.py): their folder under the runs
# folder, and the search-space key of the learning rate (beside the method's hyperparameter names).
TUNE_DIR = "tune"
LR_KEY = "lr"


def epoch_lr(base_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """Learning rate of a 0-based epoch: constant, or cosine from base_lr towards 0 at the end."""
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base_lr


@dataclass(frozen=True)
class Preset:
    """Defaults for a family of runs; every field can still be overridden per run (CLI flags, --config keys).

    Teachers and students have their own epochs, batch size and learning rate: make_config picks by role.
    """

    name: str
    load_size: int  # short side of the cached images
    crop_size: int
    teacher_batch_size: int
    student_batch_size: int
    teacher_lr: float
    student_lr: float
    weight_decay: float
    teacher_epochs: int
    student_epochs: int
    weights: str  # "imagenet" | "none" | path
    beta: float | None  # None: the scene's catalog beta
    lr_schedule: str  # "constant" | "cosine" (decays to 0 by the last epoch, so the scored model is settled)
    description: str
    pose_loss: str = "sum"  # "sum" | "mean" (see POSE_LOSS_FORMS)
    adam_eps: float = 1e-8
    head_init: str = "torchvision"  # "torchvision" | "sckd"
    normalize: str = "imagenet"  # see NORMALIZATIONS
    normalize_reason: str = ""  # why this preset normalises its input the way it does

    def for_role(self, role: str) -> dict[str, Any]:
        """The role's epochs, batch size and learning rate (teacher or student)."""
        if role not in ROLES:
            raise KdbenchError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        return {k: getattr(self, f"{role}_{k}") for k in ROLE_FIELDS}


ROLE_FIELDS = ("epochs", "batch_size", "lr")  # a preset holds one per role; overrides `teacher_lr` etc. too

PRESETS: dict[str, Preset] = {
    # SCKD's code setting (inherited from poselstm-pytorch): load 256, crop 224, 500 epochs, Adam(eps=1,
    # weight_decay=0.0625), nn.MSELoss pose loss (the element mean) with beta 500, ImageNet trunk, head
    # N(0, 0.01) and xyz output N(0, 0.5). Teachers at SCKD's README command (lr 1e-3, batch 32); students
    # at its KD_train.py defaults, which that command does not override (lr 5e-4 in
    # options/KD_train_options.py, batchSize 75 in options/base_options.py). Unlike SCKD, the last epoch is
    # scored.
    "paper": Preset("paper", 256, 224, teacher_batch_size=32, student_batch_size=75, teacher_lr=1e-3,
                    student_lr=5e-4, weight_decay=0.0625, teacher_epochs=500, student_epochs=500,
                    weights="imagenet", beta=500.0, lr_schedule="constant",
                    description="SCKD's code setting: 256/224 px, 500 epochs, teachers batch 32 lr 1e-3, students "
                    "batch 75 lr 5e-4, Adam eps 1 weight decay 0.0625, mean-form pose loss with beta 500, "
                    "ImageNet trunk, SCKD head init, SCKD's input (0-255 minus the train mean image)",
                    pose_loss="mean", adam_eps=1.0, head_init="sckd", normalize="sckd",
                    normalize_reason="SCKD's (poselstm's) input, to reproduce its optimisation: BatchNorm after "
                    "conv1 removes the 0-255 scale in training (stem activations within 2% of ImageNet "
                    "normalisation's), but Adam with eps 1 and weight decay 0.0625 sees 49x larger conv1 inputs "
                    "(benchmarks/bench_normalize.py, README)"),
    # Offline on a 2-core laptop CPU: tiny images, from scratch; teachers get far more epochs than students
    # so that they are clearly better and KD has something to teach. Sized so that the default `kdbench run`
    # (5 methods x 2 synthetic scenes x 3 seeds) fits in about 10-15 minutes on 2 cores; at 40/32 px with 20
    # teacher epochs the SynthRoom teacher did not beat the student trained alone (0.51 m vs 0.46 m).
    "quick": Preset("quick", 40, 32, teacher_batch_size=32, student_batch_size=32, teacher_lr=1e-3,
                    student_lr=1e-3, weight_decay=0.0, teacher_epochs=30, student_epochs=8, weights="none",
                    beta=None, lr_schedule="cosine",
                    description="offline CPU smoke benchmark: 40/32 px, from scratch, teacher 30 / student 8 "
                    "epochs, cosine learning-rate decay",
                    normalize_reason="ImageNet statistics, kdbench's default since v0.1 (job ids keep it)"),
}


def get_preset(name: str) -> Preset:
    """A preset by name, with a clear error listing the valid ones."""
    if name not in PRESETS:
        raise KdbenchError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model; its hash names the run folder and the store row."""

    scene: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    load_size: int
    crop_size: int
    beta: float
    weights: str = "none"
    lr_schedule: str = "constant"  # "constant" | "cosine"
    learn_beta: bool = False  # Kendall 2017 learned weighting instead of fixed beta
    normalize: str = "imagenet"  # see NORMALIZATIONS
    seed: int = 0
    method: str = "baseline"
    method_params: dict[str, Any] = field(default_factory=dict)
    teacher_hash: str | None = None  # config hash of the teacher this student learns from
    teacher_arch: str | None = None
    preset: str = "custom"
    # Identity: a teacher and a no-KD student with the same arch and epochs are different jobs.
    role: str = "student"
    pose_loss: str = "sum"
    adam_eps: float = 1e-8
    head_init: str = "torchvision"
    precision: str = "fp32"
    compile: bool = False
    # Fingerprint of the data the job trains and is evaluated on (cache manifests of both splits), so a
    # changed scene is a different job; None where the caller does not know it (a bare `train` in tests).
    data: str | None = None
    # Added after v0.2 (see LEGACY_DEFAULTS): what the job is scored on; "val" trains on the training split
    # minus its validation part and scores on that part (tuning), never on test frames.
    eval_split: str = "test"
    # The validation rule of a val-scored job (kdbench/scenes/validation.py; None with eval_split "test"):
    # set to the default rule when eval_split is "val", so the rule is part of those jobs' identity only.
    val_rule: str | None = None
    # Seed of the teacher a student learns from, where it differs from the student's own seed (a crossed
    # teacher-seeds x student-seeds design); None: the same seed (every v0.2 job).
    teacher_seed: int | None = None
    # BatchNorm statistics the scored model uses (kdbench.models.bn_stats): "running" (the running averages of
    # training, every v0.2 job) or "recompute" (recomputed over the training frames after the last epoch);
    # "auto" resolves per architecture (kdbench.models.families.default_bn_stats), as make_config asks, once:
    # a config copied with replace(arch=...) keeps the value resolved for its first architecture.
    bn_stats: str = "running"
    # Labels (LABEL_FIELDS): recorded with the job, never hashed. The leaderboard row of a method variant
    # ("sckd:alpha=0"; empty: the method's name), and the torch CPU thread count the job trained with.
    method_label: str = ""
    threads: int | None = None
    # Label: how the hyperparameters were chosen ("tuned on validation, 20 trials"; empty: the defaults).
    tuning: str = ""

    def __post_init__(self):
        for name in ("epochs", "batch_size", "load_size", "crop_size"):
            if getattr(self, name) <= 0:
                raise KdbenchError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.crop_size > self.load_size:
            raise KdbenchError(f"crop size {self.crop_size} exceeds load size {self.load_size}: lower --crop "
                               "or raise the load size")
        if self.lr_schedule not in LR_SCHEDULES:
            raise KdbenchError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        for name, valid in (("normalize", NORMALIZATIONS), ("role", ROLES), ("pose_loss", POSE_LOSS_FORMS),
                            ("head_init", HEAD_INITS), ("precision", PRECISIONS)):
            if getattr(self, name) not in valid:
                raise KdbenchError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")
        for name in ("lr", "adam_eps"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise KdbenchError(f"{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise KdbenchError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.beta) and self.beta >= 0):  # a negative beta rewards rotation error
            raise KdbenchError(f"beta (--beta) must be a finite number >= 0, got {self.beta!r}")
        if self.seed < 0:
            raise KdbenchError(f"seed must be >= 0, got {self.seed}: seeds are non-negative integers")
        if self.eval_split not in EVAL_SPLITS:
            raise KdbenchError(f"eval_split must be one of {', '.join(EVAL_SPLITS)}, got {self.eval_split!r}")
        if self.eval_split == "val":
            from kdbench.scenes.validation import parse_rule

            object.__setattr__(self, "val_rule", parse_rule(self.val_rule).key)  # canonical text
        else:  # a test-scored job has no validation part (so `val_cfg.replace(eval_split="test")` is its test job)
            object.__setattr__(self, "val_rule", None)
        if self.bn_stats == "auto":
            from kdbench.models.families import default_bn_stats

            object.__setattr__(self, "bn_stats", default_bn_stats(self.arch))
        if self.bn_stats not in BN_STATS:
            raise KdbenchError(f"bn_stats must be one of auto, {', '.join(BN_STATS)}, got {self.bn_stats!r}")
        if self.teacher_seed is not None and self.teacher_seed < 0:
            raise KdbenchError(f"teacher_seed must be >= 0, got {self.teacher_seed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def identity(self) -> dict[str, Any]:
        """The fields that name the job: labels dropped, post-v0.2 fields dropped at their legacy default."""
        d = self.to_dict()
        for name in LABEL_FIELDS:
            d.pop(name, None)
        for name, legacy in LEGACY_DEFAULTS.items():
            if name in d and d[name] == legacy:
                d.pop(name)
        later = LEGACY_METHOD_DEFAULTS.get(self.method, {})
        if later:
            d["method_params"] = {k: v for k, v in d["method_params"].items() if not (k in later and v == later[k])}
        return d

    def hash(self) -> str:
        """Stable 12-hex-digit hash of the identity fields (see LEGACY_DEFAULTS and LABEL_FIELDS)."""
        d = self.identity()
        blob = json.dumps(d, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def make_config(scene: str, arch: str, preset: str = "quick", role: str = "student", **overrides: Any) -> TrainConfig:
    """A TrainConfig from a preset (the role's epochs, batch size, lr) with per-run overrides; None: default.

    `teacher_lr`, `student_epochs`, ... (ROLE_FIELDS with a role prefix) override only that role's value and
    win over the plain `lr`, `epochs`, ...
    """
    from kdbench.scenes import get_scene

    p = get_preset(preset)
    spec = get_scene(scene)
    base = dict(
        scene=spec.name, arch=arch, **p.for_role(role), weight_decay=p.weight_decay, load_size=p.load_size,
        crop_size=p.crop_size, beta=p.beta if p.beta is not None else spec.beta, weights=p.weights,
        lr_schedule=p.lr_schedule, preset=p.name, role=role, pose_loss=p.pose_loss, adam_eps=p.adam_eps,
        head_init=p.head_init, normalize=p.normalize, bn_stats="auto",
    )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    for r in ROLES:
        for k in ROLE_FIELDS:
            value = overrides.pop(f"{r}_{k}", None)
            if value is not None and r == role:
                overrides[k] = value
    base.update(overrides)
    return TrainConfig(**base)
