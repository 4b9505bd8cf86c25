"""tuned.toml: what `kdbench tune` chose, and `kdbench run --hparams FILE` / `--methods NAME:tuned` using it.

The file has one table per row and scene group (or scene, with `kdbench tune --select scene`):

    [rows."sckd".synthetic]
    values = { sigma = 41.2, alpha = 310.0, lr = 0.0021 }
    val_error = 0.231        # the chosen trial's validation error (geometric mean, see runners/tune.py)
    trials = 20              # trials of this row's study: every row gets the same number
    trial = 13               # the chosen trial's number in the study

A tuned row trains the chosen values on the full training split and is scored on test, as every run is.
With `--hparams FILE` every row the file tunes trains its tuned values under its own name (so the
leaderboard compares tuned against tuned baseline); `NAME:tuned` in --methods adds a row of that name
beside the others (e.g. `--methods baseline,sckd,sckd:tuned`), from --hparams or RUNS_DIR/tuned.toml.
Either way the jobs record "tuned on validation, N trials" (TrainConfig.tuning) for the leaderboard.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.runners.benchconfig import toml_value

TUNED_SUFFIX = ":tuned"
FORMAT = "kdbench-tuned-1"


def choose(study, select: str, scenes: list[str]) -> dict[str, dict[str, Any]]:
    """The chosen trial per group (key 'group') or per scene: lowest validation error of the complete trials."""
    from optuna.trial import TrialState

    from kdbench.runners.tune import counted

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    n = sum(counted(t) for t in study.get_trials(deepcopy=False))
    if not complete:
        return {}
    if select == "group":
        best = min(complete, key=lambda t: (t.value, t.number))
        return {"group": {"values": dict(best.params), "val_error": best.value, "trials": n, "trial": best.number}}
    out = {}
    for scene in scenes:
        scored = [t for t in complete if scene in t.user_attrs.get("scene_errors", {})]
        if scored:
            best = min(scored, key=lambda t: (t.user_attrs["scene_errors"][scene], t.number))
            out[scene] = {"values": dict(best.params), "val_error": best.user_attrs["scene_errors"][scene],
                          "trials": n, "trial": best.number}
    return out


def write_tuned(studies: dict[tuple[str, str], Any], path: str | os.PathLike, select: str, trials: int,
                study: str, storage: Path | None = None, opts: Any = None, seed: int = 0) -> Path:
    """Write the tuned file (atomically) from the studies of a tune; returns its path."""
    from kdbench.fileio import write_text_atomic

    lines = ["# written by `kdbench tune`: hyperparameters chosen on the validation split (never on test);",
             "# use them with `kdbench run --hparams THIS_FILE` (or --methods NAME:tuned)",
             "[meta]", f"format = {toml_value(FORMAT)}", f"study = {toml_value(study)}",
             f"storage = {toml_value(str(storage) if storage else '')}", f"selection = {toml_value(select)}",
             f"trials = {trials}", f"seed = {seed}", 'split = "val"']
    if opts is not None:
        lines += [f"preset = {toml_value(opts.preset)}", f"seeds = {toml_value(opts.seeds)}",
                  f"student_arch = {toml_value(opts.student_arch)}"]  # the values are this architecture's
    lines.append("")
    for (label, group), st in studies.items():
        scenes = st.user_attrs.get("scenes", [])
        for key, entry in choose(st, select, scenes).items():
            where = group if key == "group" else key
            lines += [f"[rows.{json.dumps(label)}.{json.dumps(where)}]",
                      f"method = {toml_value(st.user_attrs.get('method', label.split(':')[0]))}",
                      f"values = {toml_value(entry['values'])}", f"val_error = {toml_value(entry['val_error'])}",
                      f"trials = {entry['trials']}", f"trial = {entry['trial']}",
                      f"scenes = {toml_value(scenes if key == 'group' else [key])}", ""]
    path = Path(path)
    write_text_atomic(path, "\n".join(lines))
    return path


def read_tuned_arch(path: str | os.PathLike) -> str | None:
    """The student architecture a tuned file's values were chosen for (None in files written before it was
    recorded)."""
    from kdbench.runners.benchconfig import read_toml

    return read_toml(path).get("meta", {}).get("student_arch")


def read_tuned(path: str | os.PathLike) -> dict[str, dict[str, dict[str, Any]]]:
    """rows -> {group or scene -> entry} of a tuned file, checked; errors name the file and the fix."""
    from kdbench.runners.benchconfig import read_toml

    path = Path(path)
    if not path.is_file():
        raise KdbenchError(f"tuned file {path} does not exist: run `kdbench tune` first (it writes "
                           "RUNS_DIR/tuned.toml), or pass --hparams path/to/tuned.toml")
    doc = read_toml(path)
    if doc.get("meta", {}).get("format") != FORMAT or not isinstance(doc.get("rows", {}), dict):
        raise KdbenchError(f"{path} is not a tuned file written by `kdbench tune` (no [meta] format = "
                           f"{FORMAT!r}): pass the tuned.toml that `kdbench tune` wrote")
    rows = doc.get("rows", {})
    for label, entries in rows.items():
        for where, entry in entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("values"), dict) or "lr" not in entry["values"]:
                raise KdbenchError(f"{path}: [rows.{json.dumps(label)}.{json.dumps(where)}] has no values table "
                                   "with an lr: rewrite the file with `kdbench tune`")
    return rows


def tuned_items(methods: str | list[str], hparams: str | os.PathLike | None,
                runs_dir: str | os.PathLike) -> tuple[list[tuple[str, str | None]], Path | None]:
    """The rows of a run's --methods as (canonical item, tuned row label or None), and the tuned file.

    With `--hparams` alone every row the file tunes is tuned under its own label; with NAME:tuned items
    only those are (from --hparams, else RUNS_DIR/tuned.toml). No file: the run tunes nothing.
    """
    from kdbench.methods.variants import split_items
    from kdbench.runners.plan import parse_methods

    items = split_items(methods) if isinstance(methods, str) else [i for m in methods for i in split_items(m)]
    marked = [i for i in items if i.endswith(TUNED_SUFFIX)]
    if not marked and not hparams:
        return [(i, None) for i in items], None
    path = Path(hparams) if hparams else Path(runs_dir) / "tuned.toml"
    tuned = read_tuned(path)
    out: list[tuple[str, str | None]] = []
    for item in items:
        if item.endswith(TUNED_SUFFIX):
            base = parse_methods([item[: -len(TUNED_SUFFIX)]])[0]
            if base not in tuned:
                raise KdbenchError(f"--methods {item}: {path} has no tuned row {base!r} (it tunes "
                                   f"{', '.join(tuned) or 'nothing'}): tune it with `kdbench tune --methods {base}`")
            out.append((base, f"{base}{TUNED_SUFFIX}"))
        else:  # --hparams alone: every row the file tunes, under its own name
            out += [(c, c if not marked and c in tuned else None) for c in parse_methods([item])]
    return list(dict.fromkeys(out)), path


def tuned_planner(rows_asked: list[tuple[str, str | None]], path: Path):
    """A plan_benchmark planner: make_plan per scene and row, tuned rows with the file's values for that scene."""
    from kdbench.methods.registry import get_method
    from kdbench.runners.plan import make_plan

    rows = read_tuned(path)
    tuned_arch = read_tuned_arch(path)

    def planner(specs, seeds, teacher_arch, student_arch, preset, sets, **overrides):
        jobs, seen = [], set()
        for spec in specs:
            for item, label in rows_asked:
                name = item.split(":")[0]
                own = {k: v for k, v in sets.items() if k == name}
                part = make_plan([item], [spec], seeds, teacher_arch, student_arch, preset, own, **overrides)
                if label is not None:
                    entry = rows[item].get(spec.name) or rows[item].get(spec.family)
                    if entry is None:
                        raise KdbenchError(f"{path}: row {item!r} was not tuned on {spec.name} or its group "
                                           f"{spec.family} (tuned: {', '.join(rows[item])}): tune it there "
                                           "first, or drop the scene")
                    for j in part:
                        if tuned_arch and j.kind == "student" and j.cfg.arch != tuned_arch:
                            raise KdbenchError(f"{path} was tuned for --student-arch {tuned_arch}, not {j.cfg.arch}: "
                                               f"run --student-arch {tuned_arch}, or tune {j.cfg.arch} with "
                                               f"`kdbench tune --student-arch {j.cfg.arch} --out FILE`")
                    part = [_tuned_job(j, entry, label, get_method(name)) for j in part]
                for job in part:
                    if job.id not in seen:
                        seen.add(job.id)
                        jobs.append(job)
        return jobs

    return planner


def _tuned_job(job, entry: dict[str, Any], label: str, cls):
    if job.kind == "teacher":
        return job
    values = dict(entry["values"])
    params = {k: cls.hparams[k].parse(v, f"{cls.name}.{k}") for k, v in values.items() if k != "lr"}
    note = f"tuned on validation, {entry.get('trials', '?')} trials"
    row = label if label != job.method else job.method_label
    # The row label goes into the config too (a label, not hashed): --rebuild-store restores rows from it.
    cfg = job.cfg.replace(lr=float(values["lr"]), method_params={**job.cfg.method_params, **params}, tuning=note,
                          method_label=row)
    return replace(job, cfg=cfg, method_label=row)
