"""The job plan: methods x scenes x seeds, with one shared teacher per (scene, seed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdbench.config import TrainConfig, make_config
from kdbench.errors import KdbenchError
from kdbench.methods import available_methods, get_method, resolved_params
from kdbench.scenes.catalog import SceneSpec

BUILTIN_ORDER = ("baseline", "vanilla", "attentive", "similarity", "hint", "sckd")


@dataclass(frozen=True)
class Job:
    """One training run; `id` is its config hash, so identical work is recognised across invocations."""

    kind: str  # "teacher" | "student"
    cfg: TrainConfig
    teacher_id: str | None = None

    @property
    def id(self) -> str:
        return self.cfg.hash()

    @property
    def run_dir(self) -> str:
        """Folder under the runs directory (relative, so a shared runs folder works on every machine)."""
        c = self.cfg
        return f"{c.scene}/{self.kind}-{c.arch}-{c.method}-seed{c.seed}-{self.id}"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.cfg.arch} {self.cfg.method} on {self.cfg.scene} (seed {self.cfg.seed})"


def parse_methods(arg: str | list[str]) -> list[str]:
    """`all` or a comma-separated list of registered methods, in a stable order."""
    names = arg.split(",") if isinstance(arg, str) else list(arg)
    names = [n.strip() for n in names if n.strip()]
    registered = available_methods()
    if names == ["all"] or not names:
        rest = sorted(n for n in registered if n not in BUILTIN_ORDER)
        return [n for n in BUILTIN_ORDER if n in registered] + rest
    for n in names:
        get_method(n)  # raises with the list of valid names
    return list(dict.fromkeys(names))


def parse_seeds(arg: str | int | list[int]) -> list[int]:
    """`3` means seeds 0, 1, 2; `0,5,7` means those seeds."""
    if isinstance(arg, int):
        return list(range(arg))
    if isinstance(arg, list):
        return arg
    text = str(arg).strip()
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        n = int(text)
    except ValueError:
        raise KdbenchError(f"--seeds {arg!r}: give a count (3) or a comma-separated list (0,1,2)") from None
    if n < 1:
        raise KdbenchError(f"--seeds {arg!r}: the count must be at least 1")
    return list(range(n))


def make_plan(methods: list[str], scenes: list[SceneSpec], seeds: list[int], teacher_arch: str = "resnet34",
              student_arch: str = "resnet18", preset: str = "quick",
              method_params: dict[str, dict[str, Any]] | None = None, **overrides: Any) -> list[Job]:
    """Jobs in dependency order: per scene and seed, the teacher first, then one student per method."""
    method_params = method_params or {}
    unknown = sorted(set(method_params) - set(methods))
    if unknown:
        raise KdbenchError(f"--set names method(s) {', '.join(unknown)} that this run does not include "
                           f"(methods: {', '.join(methods)})")
    params = {m: resolved_params(m, method_params.get(m)) for m in methods}  # validates every --set early
    jobs: list[Job] = []
    for spec in scenes:
        for seed in seeds:
            teacher = Job("teacher", make_config(spec.name, teacher_arch, preset, role="teacher", seed=seed,
                                                 **_for_arch(overrides, teacher_arch)))
            needs = [m for m in methods if get_method(m).needs_teacher]
            if needs:
                jobs.append(teacher)
            for m in methods:
                uses_teacher = get_method(m).needs_teacher
                cfg = make_config(spec.name, student_arch, preset, role="student", seed=seed, method=m,
                                  method_params=params[m], teacher_hash=teacher.id if uses_teacher else None,
                                  teacher_arch=teacher_arch if uses_teacher else None,
                                  **_for_arch(overrides, student_arch))
                jobs.append(Job("student", cfg, teacher.id if uses_teacher else None))
    return jobs


def _for_arch(overrides: dict[str, Any], arch: str) -> dict[str, Any]:
    """Overrides for one architecture: `weights` may map arch -> file (`--weights resnet34=a.pth,...`)."""
    weights = overrides.get("weights")
    return {**overrides, "weights": weights.get(arch)} if isinstance(weights, dict) else overrides
