"""`kdbench tune`: the same hyperparameter search for every row, on the validation split, never on test.

Each row (a method or variant of `--methods`) gets one Optuna study per scene group (catalog family), all in
one SQLite file, RUNS_DIR/tune/<study>.sqlite, so a killed tune resumes and several `kdbench tune` processes
on the same runs folder share the work. A row's space is its method's declared ranges (HParam.search; keys
the variant or --set fixes are left out) plus the learning rate (the preset's / 10 .. x 10, log), so a KD
weight cannot win by acting as a second learning rate; the baseline searches the learning rate alone.

Every trial is a kdbench job per scene and seed, planned and run by `run_benchmark` (same executor, same
teacher per scene and seed, finished jobs reused) with eval_split="val": trained on the training split minus
its validation part and scored on that part (the last epoch). Teachers train on the same frames, so no val
frame reaches a student through its teacher. A trial's value is the validation error: the geometric mean of
the median translation (m) and rotation (deg) errors over the group's scenes and seeds (scale-free, so no
scene or unit dominates). Pruning (--prune, Optuna's MedianPruner) steps per scene of a group, not per
epoch: training records no per-epoch validation score; a group of one scene is never pruned.

Equal budgets: every (row, group) study ends with exactly --trials finished trials (complete, pruned or
failed), counted under a lock so that parallel processes do not overshoot. A trial left running by a killed
process (its lock is free) is marked failed-stale, not counted, and its values are asked again, so its jobs
resume from their checkpoints. The sampler (TPE) is seeded per trial from --seed, the study and the trial's
number: the same seed picks the same values, also across a resume.

One student architecture per tune (a --student-arch list is refused: its studies would average over the
architectures and give each the same values); tuned.toml records it and `run --hparams` refuses another.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kdbench.config import LR_KEY, TUNE_DIR
from kdbench.errors import KdbenchError
from kdbench.mathutil import geomean

DEFAULT_STUDY = "tune"
LR_FACTOR = 10.0  # the learning rate is searched over preset lr / 10 .. preset lr x 10 (log)
VAL_MARK = "@val"  # in the store's method column of every tuning job: never a leaderboard row
SELECTIONS = ("group", "scene")
DEFAULTS = {"methods": "baseline,sckd", "scenes": "SynthRoom", "trials": 4}  # `kdbench tune` with no arguments


def _optuna():
    try:
        import optuna
    except ImportError:
        raise KdbenchError("kdbench tune needs Optuna: pip install 'kdbench[tune]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass(frozen=True)
class Row:
    """One tuned row: its canonical item, method, resolved base parameters and searched space."""

    label: str
    name: str
    params: dict[str, Any]
    space: dict[str, tuple[float, float, str]]  # method keys and LR_KEY -> (low, high, scale)
    types: dict[str, str] = field(default_factory=dict)  # key -> HParam type ("float" | "int")

    @property
    def method_keys(self) -> list[str]:
        return [k for k in self.space if k != LR_KEY]


def check_trials(trials: Any) -> int:
    """--trials as a whole number >= 1, or a one-line error naming the value."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise KdbenchError(f"--trials {trials!r}: every row needs at least one trial; give a whole number >= 1, "
                           "e.g. --trials 20")
    return trials


def one_student_arch(arch: Any) -> str:
    """--student-arch of a tune as one checked name: a study tunes one architecture (values chosen on an average
    over several would be given to each of them), so a list is refused."""
    from kdbench.models.families import parse_archs

    text = ",".join(arch) if isinstance(arch, (list, tuple)) else str(arch)
    archs = parse_archs(text)
    if len(archs) > 1:
        raise KdbenchError(f"--student-arch {text!r}: tune one student architecture at a time: --student-arch A "
                           f"(e.g. --student-arch {archs[0]}; for the next, another tune with --student-arch "
                           f"{archs[1]} --study NAME --out FILE)")
    return archs[0]


def row_spaces(items: list[str], sets: dict[str, dict[str, str]], preset_lr: float) -> list[Row]:
    """Each --methods item as a Row: its method's search ranges minus the keys it fixes, plus the lr range."""
    from kdbench.methods import get_method
    from kdbench.methods.variants import parse_variant, resolve_methods

    out = []
    for variant, item in zip(resolve_methods(items, sets), items):
        cls = get_method(variant.name)
        fixed = set(parse_variant(item)[1]) | set(sets.get(variant.name, {}))
        declared = {k: hp for k, hp in cls.hparams.items() if hp.search}
        numeric = [k for k, hp in cls.hparams.items() if hp.type in ("float", "int")]
        if numeric and not declared:
            raise KdbenchError(f"method {variant.name!r} declares no search space for its hyperparameters "
                               f"({', '.join(numeric)}): add HParam(..., search=(low, high, 'log')) to the ones to "
                               f"tune, or fix them in a variant ({variant.name}:{numeric[0]}=VALUE) to tune its "
                               "learning rate alone")
        space = {k: tuple(hp.search) for k, hp in declared.items() if k not in fixed}
        if LR_KEY in space:
            raise KdbenchError(f"method {variant.name!r} has a hyperparameter named {LR_KEY!r}, which clashes "
                               "with the learning rate every row searches: rename it")
        space[LR_KEY] = (preset_lr / LR_FACTOR, preset_lr * LR_FACTOR, "log")
        types = {k: cls.hparams[k].type for k in space if k != LR_KEY}
        out.append(Row(variant.label, variant.name, variant.params, space, types))
    return out


def distributions(row: Row) -> dict[str, Any]:
    """Optuna distributions of a row's space."""
    optuna = _optuna()
    out = {}
    for key, (low, high, scale) in row.space.items():
        if scale == "int" or row.types.get(key) == "int":
            out[key] = optuna.distributions.IntDistribution(int(low), int(high), log=scale == "log")
        else:
            out[key] = optuna.distributions.FloatDistribution(low, high, log=scale == "log")
    return out


def scene_groups(specs: list) -> dict[str, list]:
    """Scenes by catalog family, in the order given: each group is tuned on its own."""
    groups: dict[str, list] = {}
    for spec in specs:
        groups.setdefault(spec.family, []).append(spec)
    return groups


def error_geomean(values: list[float]) -> float:
    """Geometric mean of errors; inf (a trial that loses) when none is given or any is not positive and finite."""
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        return math.inf
    return geomean(values)


def job_error(metrics: dict[str, float]) -> float:
    """A job's validation error: the geometric mean of its median translation and rotation errors."""
    return error_geomean([metrics.get("median_t", math.nan), metrics.get("median_r", math.nan)])


def study_path(runs_dir: str | os.PathLike, study: str) -> Path:
    """RUNS_DIR/tune/<study>.sqlite"""
    return Path(runs_dir) / TUNE_DIR / f"{study}.sqlite"


def open_storage(path: Path):
    """The Optuna RDB storage of a study file (SQLite, waiting on other processes' writes)."""
    optuna = _optuna()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


def study_name(row: Row, group: str) -> str:
    return f"{row.label}|{group}"


@dataclass
class TuneOptions:
    """What every trial's jobs share (the `run` options of a tune) and what identifies its studies."""

    seeds: list[int]
    teacher_arch: str = "resnet34"
    student_arch: str = "resnet18"
    preset: str = "quick"
    sets: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    executor: str = "local"
    address: str | None = None
    data_root: str | os.PathLike | None = None
    device: str | None = None
    jobs_per_gpu: Any = None
    checkpoint_every: float | None = None
    quiet: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields: epochs, load_size, ...

    def setting(self) -> dict[str, Any]:
        """What the jobs of a study depend on besides the sampled values (a study never mixes two).

        bn_stats enters as the jobs resolve it per architecture, and only where it is not "running" (what every
        study made before the field computed): a study of MobileNetV3 students made before statistics were
        recomputed is not resumed with trials that recompute them, and `--bn-stats auto` is the default.
        """
        from kdbench.models.families import default_bn_stats

        overrides = {k: v for k, v in sorted(self.overrides.items()) if v is not None}
        chosen = overrides.pop("bn_stats", "auto")
        out = {"seeds": self.seeds, "teacher_arch": self.teacher_arch, "student_arch": self.student_arch,
               "preset": self.preset, "sets": sorted(self.sets), "overrides": overrides}
        bn = {a: default_bn_stats(a) if chosen == "auto" else chosen for a in (self.teacher_arch, self.student_arch)}
        if any(v != "running" for v in bn.values()):
            out["bn_stats"] = bn
        return out


def split_identity() -> dict[str, Any]:
    """What the trials are scored on: the validation split and the rule that carves it (scenes/validation.py)."""
    from kdbench.scenes.validation import DEFAULT_RULE_KEY

    return {"eval_split": "val", "val_rule": DEFAULT_RULE_KEY}


def load_or_create(storage, name: str, row: Row, group: str, scenes: list[str], opts: TuneOptions,
                   prune: bool, path: Path):
    """The study of (row, group), created with its identity, or the existing one if that identity matches."""
    optuna = _optuna()
    space = {k: list(v) for k, v in row.space.items()}
    identity = {"space": space, "split": split_identity(), "scenes": scenes, "setting": opts.setting(),
                "prune": prune}
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
        if not study.user_attrs:
            for key, value in identity.items():
                study.set_user_attr(key, json.loads(json.dumps(value)))
            study.set_user_attr("row", row.label)
            study.set_user_attr("method", row.name)
            study.set_user_attr("group", group)
    attrs = study.user_attrs
    fix = (f"start another study with --study NEW_NAME (or move {path} aside); trials of different "
           "settings are never mixed")
    for key, what in (("space", "search space"), ("split", "split"), ("scenes", "scenes"),
                      ("setting", "training setting"), ("prune", "pruning setting")):
        want = json.loads(json.dumps(identity[key]))
        if attrs.get(key) != want:
            raise KdbenchError(f"study {name!r} in {path} was made with another {what} ({attrs.get(key)!r}, this "
                               f"tune: {want!r}): {fix}")
    return study


def _sampler(seed: int, name: str, number: int, n_trials: int):
    optuna = _optuna()
    derived = int(hashlib.sha256(f"{seed}|{name}|{number}".encode()).hexdigest()[:8], 16)
    startup = min(10, max(2, n_trials // 2))  # TPE's default 10 random trials would be all of a small tune
    return optuna.samplers.TPESampler(seed=derived, n_startup_trials=startup, constant_liar=True)


def _lock_path(path: Path, trial_id: int) -> Path:
    return path.with_suffix(".locks") / f"trial-{trial_id}.lock"


def _is_stale(path: Path, trial_id: int) -> bool:
    from kdbench.locks import file_lock

    lock = _lock_path(path, trial_id)
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(lock, "a tuning trial", timeout=0, quiet=True):
            return True
    except KdbenchError:
        return False


def counted(trial) -> bool:
    """A trial that used its share of the budget: complete, pruned, or failed (not left by a killed process)."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and not trial.user_attrs.get("stale"))


def _fail_stale(study, path: Path) -> int:
    """Trials left running by a dead process: failed (not counted) and their values asked again."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_stale(path, t._trial_id):
            study._storage.set_trial_user_attr(t._trial_id, "stale", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            n += 1
    return n


def _ask(study, row: Row, n_trials: int, seed: int, path: Path, locks: ExitStack):
    """The next trial (its lock held in `locks`), or None when the budget is used or running elsewhere."""
    from optuna.trial import TrialState

    from kdbench.locks import file_lock

    with file_lock(path.with_suffix(".lock"), f"study {study.study_name}", quiet=True):
        _fail_stale(study, path)
        trials = study.get_trials(deepcopy=False)
        used = sum(counted(t) for t in trials) + sum(t.state == TrialState.RUNNING for t in trials)
        if used >= n_trials:
            return None
        study.sampler = _sampler(seed, study.study_name, len(trials), n_trials)
        trial = study.ask(distributions(row))
        lock = _lock_path(path, trial._trial_id)
        lock.parent.mkdir(parents=True, exist_ok=True)
        locks.enter_context(file_lock(lock, f"trial {trial.number}", timeout=0, quiet=True))
        return trial


def _wait_for_others(study, path: Path) -> bool:
    """Wait for trials other processes run; True if there were any."""
    from optuna.trial import TrialState

    from kdbench.locks import file_lock

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        lock = _lock_path(path, t._trial_id)
        with file_lock(lock, f"trial {t.number} of {study.study_name} (in another kdbench tune)"):
            pass
    return bool(running)


def _trial_planner(row: Row, values: dict[str, Any], label: str):
    """A plan_benchmark planner: the row's jobs with the trial's values, labelled as tuning jobs."""
    from kdbench.methods.registry import get_method
    from kdbench.runners.plan import make_plan

    cls = get_method(row.name)
    method_values = {k: cls.hparams[k].parse(v, f"{row.name}.{k}") for k, v in values.items() if k != LR_KEY}

    def planner(specs, seeds, teacher_arch, student_arch, preset, sets, **overrides):
        own = {k: v for k, v in sets.items() if k == row.name}
        jobs = make_plan([row.label], specs, seeds, teacher_arch, student_arch, preset, own, **overrides)
        out = []
        for job in jobs:
            # Labels go into the config too (not hashed): --rebuild-store restores the store's rows from them.
            if job.kind == "teacher":
                mark = f"{job.method}{VAL_MARK}"
                out.append(replace(job, cfg=job.cfg.replace(method_label=mark), method_label=mark))
            else:
                cfg = job.cfg.replace(lr=float(values[LR_KEY]), method_label=label,
                                      method_params={**job.cfg.method_params, **method_values})
                out.append(replace(job, cfg=cfg, method_label=label))
        return out

    return planner


@dataclass
class TrialOutcome:
    """What one trial gave: per-scene validation errors, the group value, the job ids, pruned or failed."""

    scene_errors: dict[str, float] = field(default_factory=dict)
    jobs: list[str] = field(default_factory=list)
    value: float = math.inf
    pruned_after: str | None = None
    error: str | None = None


def trial_jobs_per_gpu(opts: TuneOptions) -> int | str | None:
    """--jobs-per-gpu as given; on CPU by default as many slots as a trial runs jobs at once (its seeds, one
    scene at a time), so that a trial of one seed trains on every core instead of on half of them. A function of
    the tune's options only, so a resumed tune gives its jobs the same thread count (kdbench.runners.concurrency)."""
    from kdbench.runners.concurrency import CPU_JOBS, cpu_slots, parse_jobs_per_gpu, uses_cuda

    if parse_jobs_per_gpu(opts.jobs_per_gpu) is not None or uses_cuda(opts.device):
        return opts.jobs_per_gpu
    return cpu_slots(min(len(opts.seeds), CPU_JOBS))


def run_trial(trial, row: Row, specs: list, opts: TuneOptions, runs_dir: str | os.PathLike,
              prune: bool) -> TrialOutcome:
    """Train and score one trial's jobs scene by scene (a pruned trial stops after a scene)."""
    from kdbench.reports.store import ResultsStore
    from kdbench.runners.benchmark import run_benchmark

    values = dict(trial.params)
    label = f"{row.label}{VAL_MARK}#{trial.number}"
    out = TrialOutcome()
    per_job: list[float] = []
    for i, spec in enumerate(specs):
        res = run_benchmark(methods=[row.label], scenes=[spec.name], seeds=opts.seeds,
                            teacher_arch=opts.teacher_arch, student_arch=opts.student_arch, preset=opts.preset,
                            sets=opts.sets, plugins=opts.plugins, executor=opts.executor, address=opts.address,
                            runs_dir=runs_dir, data_root=opts.data_root, quiet=opts.quiet, device=opts.device,
                            jobs_per_gpu=trial_jobs_per_gpu(opts), checkpoint_every=opts.checkpoint_every,
                            planner=_trial_planner(row, values, label), eval_split="val", **opts.overrides)
        students = [j for j in res.jobs if j.kind == "student"]
        failed = [res.failed[j.id] for j in res.jobs if j.id in res.failed]
        if failed:
            out.error = f"{spec.name}: {failed[0]}"
            return out
        with ResultsStore(runs_dir) as store:
            errors = [job_error(store.metrics(j.id)) for j in students]
        out.jobs += [j.id for j in students]
        per_job += errors
        out.scene_errors[spec.name] = error_geomean(errors)
        out.value = error_geomean(per_job)
        if prune and i < len(specs) - 1:
            trial.report(out.value, i)
            if trial.should_prune():
                out.pruned_after = spec.name
                return out
    return out


@dataclass
class TuneResult:
    """What `kdbench tune` did: per (row, group) study its trials; the tuned file written."""

    studies: dict[tuple[str, str], Any] = field(default_factory=dict)
    ran: int = 0  # trials run by this process
    path: Path | None = None
    tuned: Path | None = None
    seconds: float = 0.0


def tune(methods: str | list[str] = DEFAULTS["methods"], scenes: str | list[str] = DEFAULTS["scenes"],
         trials: int = DEFAULTS["trials"], seed: int = 0, runs_dir: str | os.PathLike = "runs",
         study: str = DEFAULT_STUDY, prune: bool = False, select: str = "group",
         out: str | os.PathLike | None = None, seeds: str | int | list[int] = 1, **options: Any) -> TuneResult:
    """Tune every row on every scene group with `trials` trials each, then write the tuned file."""
    from kdbench.config import make_config
    from kdbench.methods import load_plugin, parse_set_args
    from kdbench.reports.store import check_runs_dir
    from kdbench.runners.plan import parse_methods, parse_seeds
    from kdbench.runners.preflight import check_device
    from kdbench.runners.tuned import write_tuned
    from kdbench.scenes.catalog import resolve_scenes

    t0 = time.perf_counter()
    check_trials(trials)
    options["student_arch"] = one_student_arch(options.get("student_arch") or TuneOptions.student_arch)
    if select not in SELECTIONS:
        raise KdbenchError(f"--select {select!r}: use group (once per scene group) or scene (per scene)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise KdbenchError(f"--seed {seed!r}: the sampler's seed is a whole number >= 0")
    _optuna()
    opt_keys = {f for f in TuneOptions.__dataclass_fields__ if f not in ("seeds", "overrides")}
    opts = TuneOptions(seeds=parse_seeds(seeds), **{k: v for k, v in options.items() if k in opt_keys and
                                                     v is not None})
    opts.overrides = {k: v for k, v in options.items() if k not in opt_keys and v is not None}
    opts.plugins = [str(Path(p).resolve()) for p in opts.plugins]
    for p in opts.plugins:
        load_plugin(p)
    opts.device = check_device(opts.device)
    from kdbench.runners.precision import resolve_precision

    opts.overrides["precision"] = resolve_precision(opts.overrides.get("precision", "auto"), opts.device)
    check_runs_dir(runs_dir)
    # the learning rate the students would train with (the preset's, or --lr / --student-lr) centres its range
    lr_keys = {k: opts.overrides[k] for k in ("lr", "student_lr") if k in opts.overrides}
    base_lr = make_config(resolve_scenes(scenes)[0].name, opts.student_arch, opts.preset, role="student",
                          **lr_keys).lr
    rows = row_spaces(parse_methods(methods), parse_set_args(opts.sets), base_lr)
    groups = scene_groups(resolve_scenes(scenes))
    path = study_path(runs_dir, study)
    storage = open_storage(path)
    result = TuneResult(path=path)
    for group, specs in groups.items():
        for row in rows:
            name = study_name(row, group)
            st = load_or_create(storage, name, row, group, [s.name for s in specs], opts, prune, path)
            if prune:
                st.pruner = _optuna().pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
            result.ran += _tune_study(st, row, specs, opts, runs_dir, trials, seed, prune, path)
            result.studies[(row.label, group)] = st
    for st in result.studies.values():
        n = sum(counted(t) for t in st.get_trials(deepcopy=False))
        if n != trials:  # equal budgets, asserted from the study itself
            raise KdbenchError(f"study {st.study_name!r} in {path} has {n} finished trials, not --trials {trials}: "
                               "it was run with a larger --trials before; rerun with that --trials, or start "
                               "another study with --study NEW_NAME")
    result.tuned = write_tuned(result.studies, out or Path(runs_dir) / "tuned.toml", select=select,
                               trials=trials, study=study, storage=path, opts=opts, seed=seed)
    result.seconds = time.perf_counter() - t0
    return result


def _tune_study(st, row: Row, specs: list, opts: TuneOptions, runs_dir, trials: int, seed: int, prune: bool,
                path: Path) -> int:
    """Run trials of one study until its budget is used (waiting for other processes' trials); count them."""
    from kdbench.progress import console

    optuna = _optuna()
    ran = 0
    while True:
        with ExitStack() as locks:
            trial = _ask(st, row, trials, seed, path, locks)
            if trial is None:
                if _wait_for_others(st, path):
                    continue
                return ran
            outcome = run_trial(trial, row, specs, opts, runs_dir, prune)
            trial.set_user_attr("scene_errors", outcome.scene_errors)
            trial.set_user_attr("jobs", outcome.jobs)
            if outcome.error:
                trial.set_user_attr("error", outcome.error)
                st.tell(trial, state=optuna.trial.TrialState.FAIL)
                what = f"failed: {outcome.error}"
            elif outcome.pruned_after:
                trial.set_user_attr("pruned_after", outcome.pruned_after)
                st.tell(trial, state=optuna.trial.TrialState.PRUNED)
                what = f"pruned after {outcome.pruned_after} ({outcome.value:.4g})"
            else:
                st.tell(trial, outcome.value)
                what = f"validation error {outcome.value:.4g}"
            ran += 1
        if not opts.quiet:
            done = sum(counted(t) for t in st.get_trials(deepcopy=False))
            shown = ", ".join(f"{k}={v:.3g}" for k, v in trial.params.items())
            console.print(f"[bold]tune[/] {st.study_name}: trial {trial.number} ({done}/{trials}) {shown}: {what}",
                          highlight=False, soft_wrap=True)


def cmd_tune(args: Any) -> int:
    """`kdbench tune`: check --trials first, tune, print where the studies and the tuned file are."""
    check_trials(args.trials)
    _optuna()
    from kdbench.config import ROLE_FIELDS, ROLES
    from kdbench.runners.commands import preset_overrides

    res = tune(methods=args.methods, scenes=args.scenes, trials=args.trials, seed=args.seed, runs_dir=args.runs_dir,
               study=args.study, prune=args.prune, select=args.select, out=args.out, seeds=args.seeds,
               teacher_arch=args.teacher_arch, student_arch=args.student_arch, preset=args.preset, sets=args.sets,
               plugins=args.plugin, executor=args.executor, address=args.address, data_root=args.data_root,
               device=args.device, jobs_per_gpu=args.jobs_per_gpu, checkpoint_every=args.checkpoint_every,
               quiet=args.quiet, epochs=args.epochs, batch_size=args.batch_size, load_size=args.load_size,
               crop_size=args.crop, weights=args.weights, lr=args.lr, beta=args.beta, **preset_overrides(args),
               **{f"{r}_{k}": getattr(args, f"{r}_{k}") for r in ROLES for k in ROLE_FIELDS},
               precision=args.precision, compile=args.compile or None)
    print(tune_summary(res))
    return 0


def tune_summary(res: TuneResult) -> str:
    """Per study: trials, the best validation error and its values; then where things were written."""
    from optuna.trial import TrialState

    lines = []
    for (label, group), st in res.studies.items():
        trials = st.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        space = "lr only (no method search space)" if list(st.user_attrs.get("space", {})) == [LR_KEY] else \
            ", ".join(st.user_attrs.get("space", {}))
        pruned = sum(t.state == TrialState.PRUNED for t in trials)
        failed = sum(t.state == TrialState.FAIL and not t.user_attrs.get("stale") for t in trials)
        extra = "".join(f", {n} {w}" for n, w in ((pruned, "pruned"), (failed, "failed")) if n)
        head = f"{label} on {group}: {sum(counted(t) for t in trials)} trials{extra}; space: {space}"
        if done:
            best = min(done, key=lambda t: (t.value, t.number))
            values = ", ".join(f"{k}={v:.4g}" for k, v in best.params.items())
            head += f"; best validation error {best.value:.4g} (trial {best.number}: {values})"
        lines.append(head)
    lines.append(f"{res.ran} trials run now ({res.seconds:.0f} s). Studies: {res.path}; tuned values: {res.tuned} "
                 f"(use them: kdbench run --hparams {res.tuned})")
    return "\n".join(lines)
