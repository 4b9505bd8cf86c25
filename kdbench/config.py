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
PRECISIONS = ("fp32", "bf16", "fp16")  # what a job trains in; "auto" is resolved per device before hashing

# Identity rules. A field added after v0.2 gets a default that reproduces what jobs did before it existed,
# and is registered here: at that value it is left out of the hash, so every stored result keeps its id and
# its meaning; any other value is a different job. Fields in LABEL_FIELDS are recorded (config.json, the
# store) but never hashed: they name or describe a job without changing what it computes.
# A method hyperparameter added later (HParam(..., added_later=True)) is registered the same way, per method,
# when its method is registered.
LEGACY_DEFAULTS: dict[str, Any] = {"eval_split": "test", "teacher_seed": None, "val_rule": None}
LEGACY_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {}
LABEL_FIELDS: tuple[str, ...] = ("preset", "method_label", "threads")
EVAL_SPLITS = ("test", "val")  # test: train on train, score on test; val: train on train minus val, score on val


def epoch_lr(base_lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """Learning rate of a 0-based epoch: constant, or cosine from base_lr towards 0 at the end."""
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base_lr


@dataclass(frozen=True)
class Preset:
    """Defaults for a family of runs; every field can still be overridden per run."""

    name: str
    load_size: int  # short side of the cached images
    crop_size: int
    batch_size: int
    lr: float
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


PRESETS: dict[str, Preset] = {
    # SCKD's code setting (inherited from poselstm-pytorch): load 256, crop 224, batch 32, 500 epochs,
    # Adam(1e-3, eps=1, weight_decay=0.0625), nn.MSELoss pose loss (the element mean) with beta 500,
    # ImageNet trunk, head N(0, 0.01) and xyz output N(0, 0.5). Unlike SCKD, the last epoch is scored.
    "paper": Preset("paper", 256, 224, 32, 1e-3, 0.0625, 500, 500, "imagenet", 500.0, "constant",
                    "SCKD's code setting: 256/224 px, batch 32, 500 epochs, Adam 1e-3 eps 1 weight decay "
                    "0.0625, mean-form pose loss with beta 500, ImageNet trunk, SCKD head init",
                    pose_loss="mean", adam_eps=1.0, head_init="sckd"),
    # Offline on a 2-core laptop CPU: tiny images, from scratch; teachers get far more epochs than students
    # so that they are clearly better and KD has something to teach. Sized so that the default `kdbench run`
    # (5 methods x 2 synthetic scenes x 3 seeds) fits in about 10-15 minutes on 2 cores; at 40/32 px with 20
    # teacher epochs the SynthRoom teacher did not beat the student trained alone (0.51 m vs 0.46 m).
    "quick": Preset("quick", 40, 32, 32, 1e-3, 0.0, 30, 8, "none", None, "cosine",
                    "offline CPU smoke benchmark: 40/32 px, from scratch, teacher 30 / student 8 epochs, "
                    "cosine learning-rate decay"),
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
    normalize: str = "imagenet"  # "imagenet" | "mean" (the train split's mean image)
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
    # Labels (LABEL_FIELDS): recorded with the job, never hashed. The leaderboard row of a method variant
    # ("sckd:alpha=0"; empty: the method's name), and the torch CPU thread count the job trained with.
    method_label: str = ""
    threads: int | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "load_size", "crop_size"):
            if getattr(self, name) <= 0:
                raise KdbenchError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.crop_size > self.load_size:
            raise KdbenchError(f"crop size {self.crop_size} exceeds load size {self.load_size}: lower --crop "
                               "or raise the load size")
        if self.lr_schedule not in LR_SCHEDULES:
            raise KdbenchError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.normalize not in ("imagenet", "mean"):
            raise KdbenchError(f"normalize must be 'imagenet' or 'mean', got {self.normalize!r}")
        for name, valid in (("role", ROLES), ("pose_loss", POSE_LOSS_FORMS), ("head_init", HEAD_INITS),
                            ("precision", PRECISIONS)):
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
    """A TrainConfig from a preset (teacher or student epochs) with per-run overrides; None means default."""
    from kdbench.scenes import get_scene

    p = get_preset(preset)
    spec = get_scene(scene)
    base = dict(
        scene=spec.name, arch=arch,
        epochs=p.teacher_epochs if role == "teacher" else p.student_epochs,
        batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay, load_size=p.load_size,
        crop_size=p.crop_size, beta=p.beta if p.beta is not None else spec.beta, weights=p.weights,
        lr_schedule=p.lr_schedule, preset=p.name, role=role, pose_loss=p.pose_loss, adam_eps=p.adam_eps,
        head_init=p.head_init,
    )
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)
