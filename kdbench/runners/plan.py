"""The job plan: methods x scenes x seeds, with one shared teacher per (scene, seed); or a crossed design,
teacher seeds x student seeds per scene (`crossed_seeds`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdbench.config import TrainConfig, make_config
from kdbench.errors import KdbenchError
from kdbench.methods import get_method
from kdbench.methods.variants import BUILTIN_ORDER, expand_methods, resolve_methods
from kdbench.models.families import check_arch, parse_archs
from kdbench.runners.preflight import weights_for
from kdbench.scenes.catalog import SceneSpec

__all__ = ["BUILTIN_ORDER", "MAX_PLAN_JOBS", "Job", "make_plan", "parse_methods", "parse_seeds"]

# A run plans every job up front (and the store and the progress bars hold them all): a plan larger than this
# is a typo (`--seeds 100000000`) rather than a benchmark, and fails fast instead of growing memory.
MAX_PLAN_JOBS = 100_000


@dataclass(frozen=True)
class Job:
    """One training run; `id` is its config hash, so identical work is recognised across invocations."""

    kind: str  # "teacher" | "student"
    cfg: TrainConfig
    teacher_id: str | None = None
    # The leaderboard row of a method variant (e.g. "sckd:alpha=0"); not part of the id: equal work is
    # one job whatever it is called. Empty: the method's name.
    method_label: str = ""

    @property
    def method(self) -> str:
        """What the store's `method` column and the leaderboard show: the variant label or the method."""
        return self.method_label or self.cfg.method

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
        c = self.cfg
        teacher = f", teacher seed {c.teacher_seed}" if c.teacher_seed is not None else ""
        return f"{self.kind} {c.arch} {self.method} on {c.scene} (seed {c.seed}{teacher})"


def parse_methods(arg: str | list[str]) -> list[str]:
    """Method items (names, variants NAME:KEY=VALUE, groups all / ablations), canonical and deduplicated."""
    return expand_methods(arg)


def parse_seeds(arg: str | int | list[int]) -> list[int]:
    """`3` means seeds 0, 1, 2; `0,5,7` means those seeds (each a whole number >= 0)."""
    if isinstance(arg, int):
        seeds = _seed_range(arg, arg)
    elif isinstance(arg, list):
        seeds = list(arg)
    else:
        text = str(arg).strip()
        try:
            if "," in text:
                seeds = [int(s) for s in text.split(",") if s.strip()]
            else:
                seeds = _seed_range(int(text), arg)
        except ValueError:
            raise KdbenchError(f"--seeds {arg!r}: give a count (3) or a comma-separated list (0,1,2)") from None
    if seeds is None:
        raise KdbenchError(f"--seeds {arg!r}: the count must be at least 1")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad or not seeds:
        raise KdbenchError(f"--seeds {arg!r}: seeds are whole numbers >= 0 (found {bad[0] if bad else 'none'}); "
                           "give a count (3) or a list such as 0,1,2")
    return list(dict.fromkeys(seeds))


def _seed_range(n: int, arg: object) -> list[int] | None:
    """Seeds 0..n-1 (None when n < 1), refused before the list is built when n exceeds the plan bound."""
    if n > MAX_PLAN_JOBS:
        raise KdbenchError(f"--seeds {arg!r}: {n:,} seeds exceed the {MAX_PLAN_JOBS:,} jobs a run plans at most "
                           "(MAX_PLAN_JOBS); give fewer seeds, or split them over several runs on the same "
                           "--runs-dir (--seeds 0,1,2 then --seeds 3,4,5)")
    return None if n < 1 else list(range(n))


def crossed_seeds(seeds: list[int] | None, teacher_seeds: Any = None,
                  student_seeds: Any = None) -> tuple[list[int], list[int]] | None:
    """(teacher seeds, student seeds) of a crossed design, or None for the plain one (teacher seed = seed).

    `--teacher-seeds N --student-seeds M` (either alone: the other is 1) means teachers 0..N-1 and student
    seeds 0..M-1; combining them with `--seeds` is an error, since --seeds already names both.
    """
    if teacher_seeds is None and student_seeds is None:
        return None
    if seeds is not None:
        raise KdbenchError("--seeds cannot be combined with --teacher-seeds/--student-seeds: --seeds S trains "
                           "one teacher per student seed (teacher seed = student seed); for a crossed design "
                           "give only --teacher-seeds N --student-seeds M")
    out = []
    for name, arg in (("--teacher-seeds", teacher_seeds), ("--student-seeds", student_seeds)):
        try:
            out.append(parse_seeds(1 if arg is None else arg))
        except KdbenchError as exc:
            raise KdbenchError(str(exc).replace("--seeds", name)) from None
    return out[0], out[1]


def make_plan(methods: list[str], scenes: list[SceneSpec], seeds: list[int], teacher_arch: str = "resnet34",
              student_arch: str | list[str] = "resnet18", preset: str = "quick",
              method_params: dict[str, dict[str, Any]] | None = None,
              crossed: tuple[list[int], list[int]] | None = None, **overrides: Any) -> list[Job]:
    """Jobs in dependency order: per scene and seed, the teacher first, then one student per method item.

    `methods` are items as parse_methods returns them; `method_params` (--set) is the base of every item
    of that method, a variant's own keys win. `student_arch` may list several architectures
    ("mobilenet_v3_large,resnet18"): every method item runs for each, all learning from the one teacher.
    `crossed` = (teacher seeds, student seeds): per scene a teacher per teacher seed, every KD method on every
    (teacher seed, student seed) and methods without a teacher (the baseline) on the student seeds; `seeds` is
    then ignored.
    """
    variants = resolve_methods(methods, method_params)  # validates every --set and variant early
    check_arch(teacher_arch)
    students = parse_archs(",".join(student_arch) if isinstance(student_arch, (list, tuple)) else student_arch)
    n_jobs = len(scenes) * len(seeds) * (len(variants) * len(students) + 1)
    if crossed is not None:  # an upper bound: teachers, and every method on every (teacher, student) seed
        n_jobs = len(scenes) * len(crossed[0]) * (1 + len(crossed[1]) * len(variants) * len(students))
    if n_jobs > MAX_PLAN_JOBS:
        raise KdbenchError(f"this plan has about {n_jobs:,} jobs ({len(variants)} method(s) x {len(scenes)} scene(s) "
                           f"x {len(seeds)} seed(s)), more than the {MAX_PLAN_JOBS:,} a run plans at most "
                           "(MAX_PLAN_JOBS): split it over several runs on the same --runs-dir")
    if crossed is not None:
        return [j for arch in students
                for j in _crossed_plan(variants, scenes, *crossed, teacher_arch, arch, preset, overrides)
                if j.kind == "student" or arch == students[0]]  # one set of teachers for every student arch
    jobs: list[Job] = []
    for spec in scenes:
        for seed in seeds:
            teacher = Job("teacher", make_config(spec.name, teacher_arch, preset, role="teacher", seed=seed,
                                                 **_for_arch(overrides, teacher_arch)))
            if any(get_method(v.name).needs_teacher for v in variants):
                jobs.append(teacher)
            for arch in students:
                for v in variants:
                    uses_teacher = get_method(v.name).needs_teacher
                    # The label is recorded in the config (config.json) too: a rebuilt store shows the same rows.
                    cfg = make_config(spec.name, arch, preset, role="student", seed=seed, method=v.name,
                                      method_params=v.params, teacher_hash=teacher.id if uses_teacher else None,
                                      teacher_arch=teacher_arch if uses_teacher else None,
                                      method_label=_config_label(v),
                                      **_for_arch(overrides, arch))
                    jobs.append(Job("student", cfg, teacher.id if uses_teacher else None, v.label))
    return jobs


def _crossed_plan(variants: list[Any], scenes: list[SceneSpec], teacher_seeds: list[int], student_seeds: list[int],
                 teacher_arch: str, student_arch: str, preset: str, overrides: dict[str, Any]) -> list[Job]:
    """Per scene: the teachers of every teacher seed, then the students (see make_plan)."""
    jobs: list[Job] = []
    kd = [v for v in variants if get_method(v.name).needs_teacher]
    alone = [v for v in variants if not get_method(v.name).needs_teacher]
    for spec in scenes:
        teachers = {t: Job("teacher", make_config(spec.name, teacher_arch, preset, role="teacher", seed=t,
                                                  **_for_arch(overrides, teacher_arch))) for t in teacher_seeds}
        if kd:
            jobs += teachers.values()
        for seed in student_seeds:
            for v in alone:
                cfg = make_config(spec.name, student_arch, preset, role="student", seed=seed, method=v.name,
                                  method_params=v.params, method_label=_config_label(v),
                                  **_for_arch(overrides, student_arch))
                jobs.append(Job("student", cfg, None, v.label))
            for t in teacher_seeds:
                teacher = teachers[t]
                for v in kd:
                    # teacher_seed only where it differs: a student of its own seed's teacher keeps its v0.2 id
                    cfg = make_config(spec.name, student_arch, preset, role="student", seed=seed, method=v.name,
                                      method_params=v.params, teacher_hash=teacher.id, teacher_arch=teacher_arch,
                                      teacher_seed=None if t == seed else t, method_label=_config_label(v),
                                      **_for_arch(overrides, student_arch))
                    jobs.append(Job("student", cfg, teacher.id, v.label))
    return jobs


def _config_label(variant: Any) -> str:
    """The variant's row label as its config records it (--rebuild-store reads it back); empty: the method."""
    return variant.label if variant.label != variant.name else ""


def _for_arch(overrides: dict[str, Any], arch: str) -> dict[str, Any]:
    """Overrides for one architecture: `weights` may map arch -> file (`--weights resnet34=a.pth,...`)."""
    return {**overrides, "weights": weights_for(overrides.get("weights"), arch)}
