"""Leaderboards from the results store: accuracy per scene group and efficiency per architecture.

One DataFrame is built from the store (`load_results`, one row per job); `accuracy_table` reduces it to
numbers (geometric mean over seeds with its log-scale interval, failures, the change against the no-KD student from
`stats.compare_to_baseline`, best marks), and the render functions only format those numbers: markdown via tabulate,
terminal via rich, CSV and JSON via pandas.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.mathutil import geomean
from kdbench.models.families import ARCHS
from kdbench.reports.crossed import cells_per_student_seed, teachers_per_student_seed
from kdbench.reports.front import with_teacher_latency
from kdbench.reports.rows import (
    AVERAGE,
    GROUP_TITLES,
    ROW_KEY,
    result_jobs,
    row_labels,
    shown_jobs,  # noqa: F401 (re-exported: export.py and tests import it here)
)
from kdbench.reports.store import ResultsStore

if TYPE_CHECKING:
    from kdbench.reports.claims import Claims
    from kdbench.reports.stats import Significance

METRICS = ("median_t", "median_r", "mean_t", "mean_r", "n_test", "acc_0.25m_2deg", "acc_0.5m_5deg",
           "acc_5m_10deg")
METHOD_ORDER = ("baseline", "vanilla", "attentive", "similarity", "hint", "sckd")  # then plugins, A-Z
FORMATS = ("markdown", "terminal", "csv", "json")
MARK = "†"  # a significant change (kdbench.reports.stats)
CSV_TABLES = ("accuracy", "efficiency", "significance", "claims")

CAPTION = ("Median test error, translation (m) and rotation (deg), of each run's last-epoch model on the test "
           "split (no epoch is selected on test data): geometric mean over the finished seeds and, in brackets, its "
           "95% t interval on the log scale (never below zero; left out when n = 1); n = finished seeds; failed: "
           "runs of the row that failed or diverged (a result, never left out), of all its runs. Δ: geometric mean "
           "change of the error against the no-KD student (baseline) of the same architecture over the matched "
           "(scene, seed) pairs, negative is better; the average column's Δ is the scene-level estimate (per scene "
           "the mean log ratio over seeds, averaged over scenes). †: a claim at 0.05, Holm-corrected over methods x "
           "translation and rotation: in a scene's column a paired t-test over its seeds (exploratory), in the "
           "average column the scene-level test over scenes (needs 3 or more scenes). Bold: best student per column. "
           "Average: geometric mean over the scenes shown and over the seeds the baseline has on every one of them, "
           "only for rows that have all of these.")
EFFICIENCY_CAPTION = ("Sizes in MiB (2^20 bytes): params × 4 bytes (fp32), and the saved file (torch "
                      "state_dict, or the .onnx file). GFLOPs: torch FlopCounterMode at batch 1 and the "
                      "crop, a multiply-add counted as 2 FLOPs (convolutions and matrix products only); "
                      "empty where measured without torch. Latency: median / p90 in ms per batch over at "
                      "least 50 timed runs after warm-up; ≈ marks estimates, which are not measurements.")


# loading ------------------------------------------------------------------------------------------------
def open_store(runs_dir: str | os.PathLike) -> ResultsStore:
    """The existing results store of `runs_dir` (a clear error when there is none)."""
    return ResultsStore(runs_dir, create=False)


def scene_family(scene: str) -> str:
    """The catalog family of a scene ('cambridge', '7scenes', 'synthetic'), 'other' when unknown."""
    from kdbench.scenes import get_scene

    try:
        return get_scene(scene).family
    except KdbenchError:
        return "other"


def _scene_rank(scene: str) -> int:
    from kdbench.scenes import CATALOG

    names = [s.name.lower() for s in CATALOG]
    return names.index(scene.lower()) if scene.lower() in names else len(names)


def load_results(runs_dir: str | os.PathLike, scenes: str | None = None, preset: str | None = None,
                 job_ids: Iterable[str] | None = None, eval_split: str = "test") -> pd.DataFrame:
    """One row per job in the store (every status), with its metrics as columns (NaN where absent).

    Results of different presets are never mixed: jobs of presets other than `preset` (default: the preset
    of the most recently finished job) are kept out of the tables and counted in the footnote.
    `job_ids` keeps only those jobs (`kdbench run` shows the jobs it was asked to run, nothing else).
    Only jobs scored on `eval_split` are loaded: validation-scored (tuning) jobs never enter a test leaderboard.
    """
    with open_store(runs_dir) as store:
        have = {r[1] for r in store.conn.execute("PRAGMA table_info(jobs)")}
        split = "COALESCE(eval_split, 'test')" if "eval_split" in have else "'test'"  # older stores: all test
        jobs = pd.read_sql_query("SELECT id, kind, scene, method, arch, teacher_arch, seed, preset, status, "
                                 f"error, run_dir, train_seconds, updated, config, {split} AS eval_split, "
                                 "CASE WHEN json_valid(config) THEN json_extract(config, '$.teacher_seed') END "
                                 "AS teacher_seed FROM jobs ORDER BY created", store.conn)
        metrics = pd.read_sql_query("SELECT job_id, name, value FROM metrics", store.conn)
    if job_ids is not None:
        jobs = jobs[jobs["id"].isin(set(job_ids))]
    others = jobs[jobs["eval_split"] != eval_split]
    jobs = jobs[jobs["eval_split"] == eval_split]
    from kdbench.reports.tuning import with_tuning

    jobs = with_tuning(jobs)  # "tuned on validation, N trials" where kdbench run --hparams trained the row
    out = select_preset(results_frame(jobs, metrics, scenes), preset)
    if scenes:  # the footnote counts the other split's jobs of the scenes and preset shown
        from kdbench.scenes.catalog import resolve_scenes

        others = others[others["scene"].isin({s.name for s in resolve_scenes(scenes)})]
    chosen = out.attrs.get("preset") or (out["preset"].dropna().iloc[-1] if out["preset"].notna().any() else None)
    if chosen is not None:
        others = others[others["preset"] == chosen]
    out.attrs["other_split"] = (eval_split, len(others))
    return out


def select_preset(df: pd.DataFrame, preset: str | None = None) -> pd.DataFrame:
    """Mark the rows of one preset (column `in_preset`); the chosen preset is kept in df.attrs."""
    df = df.copy()
    if "preset" not in df:
        df["preset"] = None
    done = df[df["status"] == "done"]
    if preset is None and done["preset"].nunique() > 1:
        preset = done.sort_values("updated", kind="stable")["preset"].iloc[-1]
    if preset is not None and preset not in set(df["preset"]):
        known = ", ".join(sorted(str(p) for p in df["preset"].dropna().unique())) or "none"
        raise KdbenchError(f"no results of preset {preset!r} in this store (presets present: {known})")
    df["in_preset"] = True if preset is None else (df["preset"] == preset)
    df.attrs["preset"] = preset
    df.attrs["other_presets"] = sorted(str(p) for p in df.loc[~df["in_preset"], "preset"].dropna().unique())
    return df


def results_frame(jobs: pd.DataFrame, metrics: pd.DataFrame, scenes: str | None = None) -> pd.DataFrame:
    """Join job rows with their metrics (long -> wide) and add role and group columns; filter by scenes."""
    wide = metrics.pivot_table(index="job_id", columns="name", values="value", aggfunc="last")
    df = jobs.merge(wide, how="left", left_on="id", right_index=True)
    for name in ("median_t", "median_r"):
        if name not in df:
            df[name] = float("nan")
    df["role"] = df["kind"].where(df["kind"] == "teacher", "student")
    df["group"] = df["scene"].map(scene_family)
    if scenes:
        from kdbench.scenes import resolve_scenes

        wanted = {s.name.lower() for s in resolve_scenes(scenes)}
        df = df[df["scene"].str.lower().isin(wanted)]
    return df.reset_index(drop=True)


def load_profiles(runs_dir: str | os.PathLike) -> pd.DataFrame:
    """The store's profiles table as a DataFrame (one row per measurement)."""
    with open_store(runs_dir) as store:
        return pd.read_sql_query("SELECT * FROM profiles ORDER BY id", store.conn)


# accuracy ------------------------------------------------------------------------------------------------
def not_shown(df: pd.DataFrame) -> dict[str, int]:
    """Counts for the footnote: failed or diverged runs (shown as failures), unfinished (pending/running) jobs,
    superseded reruns, jobs of other presets and, on a test leaderboard, tuning jobs (not shown)."""
    split, other_split = df.attrs.get("other_split", ("test", 0))
    other = ~df["in_preset"] if "in_preset" in df else pd.Series(False, index=df.index)
    results = result_jobs(df)
    df = df[~other]
    return {"failed": int(results["failed"].sum()),
            "teachers per student seed": teachers_per_student_seed(results, ROW_KEY),
            "unfinished": int(df["status"].isin(["pending", "running"]).sum()),
            "superseded": int(df["status"].isin(["done", "failed"]).sum() - len(results)
                              + (df["status"] == "superseded").sum()),
            "of other presets": int(other.sum()),
            "scored on validation": other_split if split == "test" else 0}


def arch_rank(arch: str) -> int:
    """Sort key: family by family, smallest member first (resnet18 before resnet34 before resnet101, then
    mobilenet_v3_small before mobilenet_v3_large, as kdbench.models.families lists them); others last."""
    return ARCHS.index(arch) if arch in ARCHS else 10**3 - 1


def _row_order(acc: pd.DataFrame) -> pd.Series:
    method_rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    plugins = sorted(set(acc["method"]) - set(METHOD_ORDER))
    method_rank.update({m: len(METHOD_ORDER) + i for i, m in enumerate(plugins)})
    role = (acc["role"] != "teacher").astype(int)
    return role * 1e10 + acc["arch"].map(arch_rank) * 1e3 + acc["method"].map(method_rank)


EXTRA_METRICS = ("mean_t", "mean_r", "acc_0.25m_2deg", "acc_0.5m_5deg", "acc_5m_10deg")
ACCURACY_COLUMNS = ROW_KEY + ["label", "n_seeds", "n_failed", "n_runs", "seeds", "t_mean", "t_std", "t_ci_lo",
                              "t_ci_hi", "r_mean", "r_std", "r_ci_lo", "r_ci_hi", *EXTRA_METRICS, "n_pairs", "dt_pct",
                              "dr_pct", "sig_t", "sig_r", "best_t", "best_r", "row_failed", "row_runs"]


def accuracy_table(df: pd.DataFrame, comparison: pd.DataFrame | None = None) -> pd.DataFrame:
    """Numbers of every leaderboard: one row per (group, scene or 'average', row), ordered for display.

    Per cell over the finished student seeds (n_seeds; in a crossed design a student seed's value is the geometric
    mean over its teachers' runs, kdbench.reports.crossed): t_mean / r_mean, the geometric mean of the median
    errors, with its 95% t interval on the log scale (t_ci_lo, t_ci_hi: never below zero) and t_std, the plain standard
    deviation; means over seeds of the other metrics; n_failed of n_runs runs failed or diverged (row_failed of
    row_runs over the group's scenes: the row's failure rate). Δ (dt_pct, dr_pct): the geometric-mean change
    against the baseline student over matched pairs (stats.compare_to_baseline: per scene over its seeds, for
    the average the scene-level estimator), sig_t / sig_r: that change is a claim (Holm-corrected).
    The average row of a group uses the seeds the baseline has on every scene (see `average_seeds`).
    `comparison`: stats.compare_to_baseline(df) when the caller has it already.
    """
    from kdbench.reports import stats

    results = result_jobs(df)
    jobs = results[~results["failed"]]
    if results.empty:
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    metrics = ["median_t", "median_r"] + [m for m in EXTRA_METRICS if m in jobs]
    # A crossed design has several runs (teachers) per student seed: one value per student seed, as the tests pair.
    per_seed = cells_per_student_seed(results, metrics, ROW_KEY)
    ok = per_seed[~per_seed["failed"]]
    values = ok[ROW_KEY + ["seed"] + metrics]
    averages = _average_values(values)
    runs = ["_runs", "_failed_runs"]
    values = ok[ROW_KEY + ["seed"] + metrics + runs]
    if not averages.empty:
        values = pd.concat([values, averages.assign(_runs=1, _failed_runs=0)], ignore_index=True)
    failures = per_seed.loc[per_seed["failed"], ROW_KEY + ["seed"] + metrics + runs]
    cells = pd.concat([values.assign(_failed=False), failures.assign(_failed=True)], ignore_index=True)
    acc = pd.DataFrame([_summarise(key, rows) for key, rows in
                        cells.groupby(ROW_KEY, dropna=False, sort=False)])
    for col in ACCURACY_COLUMNS:
        if col not in acc:
            acc[col] = float("nan")
    acc = _add_failure_rate(acc, results)
    comparison = stats.compare_to_baseline(df) if comparison is None else comparison
    acc = _add_change(acc, stats.headline(comparison))
    acc = _add_best(acc)
    acc["label"] = row_labels(acc)
    from kdbench.reports.tuning import label_rows

    acc["label"] = label_rows(acc, jobs)  # "(tuned on validation, N trials)" or "(defaults)"
    acc["_group"] = acc["group"].map(lambda g: list(GROUP_TITLES).index(g))
    acc["_scene"] = acc["scene"].map(lambda s: 10**6 if s == AVERAGE else _scene_rank(s))
    acc["_row"] = _row_order(acc)
    acc = acc.sort_values(["_group", "_scene", "scene", "_row", "teacher_arch"], kind="stable")
    return acc[ACCURACY_COLUMNS].reset_index(drop=True)


def _summarise(key: tuple, rows: pd.DataFrame) -> dict[str, Any]:
    from kdbench.reports.stats import geo_summary

    out: dict[str, Any] = dict(zip(ROW_KEY, key))
    ok = rows[~rows["_failed"]]
    out["n_seeds"], out["n_failed"], out["n_runs"] = len(ok), int(rows["_failed_runs"].sum()), int(rows["_runs"].sum())
    out["seeds"] = ",".join(str(s) for s in sorted(ok["seed"]))
    for prefix, col in (("t", "median_t"), ("r", "median_r")):
        x = ok[col].to_numpy(dtype=float)
        geo = geo_summary(x)
        out[f"{prefix}_mean"], out[f"{prefix}_ci_lo"], out[f"{prefix}_ci_hi"] = geo["gmean"], geo["lo"], geo["hi"]
        out[f"{prefix}_std"] = x.std(ddof=1) if len(x) > 1 else float("nan")
    for col in EXTRA_METRICS:
        if col in ok:
            out[col] = ok[col].mean()
    return out


def _add_failure_rate(acc: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """row_failed / row_runs: failed or diverged runs of the row over all scenes of its group."""
    keys = [k for k in ROW_KEY if k != "scene"]
    rate = results.groupby(keys, dropna=False).agg(row_failed=("failed", "sum"), row_runs=("failed", "size"))
    acc = acc.drop(columns=["row_failed", "row_runs"]).merge(rate.reset_index(), how="left", on=keys)
    acc[["row_failed", "row_runs"]] = acc[["row_failed", "row_runs"]].fillna(0).astype(int)
    return acc


def average_seeds(values: pd.DataFrame, group: str) -> set[int]:
    """The seeds of a group's average column: those the baseline student has on every scene of the group
    (every row is averaged over exactly these, so the column compares like with like); without a baseline,
    the seeds every complete row has on every scene."""
    part = values[(values["group"] == group) & (values["scene"] != AVERAGE)]
    n_scenes = part["scene"].nunique()
    keys = [k for k in ROW_KEY if k not in ("group", "scene")]
    per_row = []
    for key, rows in part.groupby(keys, dropna=False):
        role, method = key[0], key[-1]
        complete = {s for s, seeds in rows.groupby("seed") if seeds["scene"].nunique() == n_scenes}
        per_row.append((role == "student" and method == "baseline", complete))
    base = [seeds for is_base, seeds in per_row if is_base]
    chosen = base or [seeds for _, seeds in per_row if seeds]
    return set.intersection(*chosen) if chosen else set()


def _average_values(values: pd.DataFrame) -> pd.DataFrame:
    """Per group, row and seed of `average_seeds`: the geometric mean over the group's scenes of the median errors
    (scenes differ in scale: a plain mean of metres would be the largest scene's), the plain mean of the other
    metrics; rows with every scene and every one of those seeds only (an average over fewer would not compare)."""
    out = []
    keys = [k for k in ROW_KEY if k not in ("group", "scene")]
    for group, part in values.groupby("group"):
        seeds = average_seeds(values, group)
        n_scenes = part["scene"].nunique()
        part = part[part["seed"].isin(seeds)]
        for key, rows in part.groupby(keys, dropna=False):
            if len(rows) < n_scenes * len(seeds):
                continue
            by_seed = rows.groupby("seed")
            mean = by_seed.mean(numeric_only=True)
            for col in ("median_t", "median_r"):
                mean[col] = by_seed[col].agg(geomean)
            out.append(mean.reset_index().assign(group=group, scene=AVERAGE, **dict(zip(keys, key))))
    if not out:
        return pd.DataFrame(columns=values.columns)
    return pd.concat(out, ignore_index=True)[values.columns]


def _add_change(acc: pd.DataFrame, comparison: pd.DataFrame) -> pd.DataFrame:
    """Δ of every cell from the comparison it belongs to (one estimator: the geometric-mean ratio over matched
    pairs, per scene over its seeds, for the average over scenes) and its mark (the comparison's claim)."""
    acc = acc.drop(columns=["n_pairs", "dt_pct", "dr_pct", "sig_t", "sig_r"])
    key = ["group", "scene", "arch", "teacher_arch", "method"]
    if comparison.empty:
        return acc.assign(n_pairs=pd.array([pd.NA] * len(acc), dtype="Int64"), dt_pct=float("nan"),
                          dr_pct=float("nan"), sig_t=False, sig_r=False)
    c = comparison.assign(claim=comparison["direction"] != "")
    wide = c.pivot_table(index=key, columns="metric", values=["change_pct", "claim"], aggfunc="first")
    wide.columns = [f"{v}_{m}" for v, m in wide.columns]
    wide = wide.reindex(columns=["change_pct_t", "change_pct_r", "claim_t", "claim_r"])
    wide = wide.rename(columns={"change_pct_t": "dt_pct", "change_pct_r": "dr_pct", "claim_t": "sig_t",
                                "claim_r": "sig_r"})
    pairs = c[c["metric"] == "t"].set_index(key)["n_pairs"].rename("n_pairs")
    wide = wide.join(pairs).reset_index()
    acc = acc.merge(wide, how="left", on=key)
    acc["n_pairs"] = acc["n_pairs"].astype("Int64")
    acc[["sig_t", "sig_r"]] = acc[["sig_t", "sig_r"]].astype("boolean").fillna(False).astype(bool)
    acc[["dt_pct", "dr_pct"]] = acc[["dt_pct", "dr_pct"]].astype(float)
    return acc


def _add_best(acc: pd.DataFrame) -> pd.DataFrame:
    """Mark the lowest student mean per group, scene and metric (ties all marked)."""
    student = acc["role"] == "student"
    for metric, flag in (("t_mean", "best_t"), ("r_mean", "best_r")):
        best = acc[student].groupby(["group", "scene"])[metric].transform("min")
        acc[flag] = student & (acc[metric] == best.reindex(acc.index))
    return acc


# efficiency ---------------------------------------------------------------------------------------------
def efficiency_table(profiles: pd.DataFrame) -> pd.DataFrame:
    """Latest measurement per (arch, device, backend, batch, crop), ordered by architecture."""
    cols = ["arch", "device", "backend", "batch", "crop", "params_m", "size_mib", "file_mib", "gflops",
            "latency_median_ms", "latency_p90_ms", "runs", "estimated", "note"]
    if profiles.empty:
        return pd.DataFrame(columns=cols)
    key = ["arch", "device", "backend", "batch", "crop"]
    eff = profiles.sort_values("id").drop_duplicates(key, keep="last")
    eff = eff.assign(params_m=eff["params"] / 1e6, size_mib=eff["size_mb"], file_mib=eff["file_mb"],
                     estimated=eff["estimated"].fillna(0).astype(int))
    eff["_arch"] = eff["arch"].map(arch_rank)
    eff["_backend"] = eff["backend"].map(lambda b: {"torch": 0, "onnxruntime": 1}.get(b, 2))
    eff = eff.sort_values(["_arch", "arch", "estimated", "device", "_backend", "backend", "batch", "crop"])
    return eff[cols].reset_index(drop=True)


# formatting ---------------------------------------------------------------------------------------------
def _num(value: float, best: bool, style: str) -> str:
    text = f"{value:.2f}" if np.isfinite(value) else str(value)
    if best and style == "markdown":
        return f"**{text}**"
    if best and style == "rich":
        return f"[bold]{text}[/bold]"
    if best and style == "text":  # plain text cannot be bold
        return f"{text}*"
    return text


def _metric_cell(r: pd.Series, prefix: str, style: str) -> str:
    """'0.93 [0.81, 1.05]' (geometric mean over seeds, 95% interval on the log scale); the value alone when n = 1;
    'failed' when every run failed; terminal styles put the interval on a line of its own so that narrow columns
    do not break the numbers."""
    if r["n_seeds"] == 0:
        return "failed"
    mean = _num(r[f"{prefix}_mean"], r[f"best_{prefix}"], style)
    lo, hi = r[f"{prefix}_ci_lo"], r[f"{prefix}_ci_hi"]
    if pd.isna(lo):
        return mean
    sep = "\n" if style in ("rich", "text") else " "
    return f"{mean}{sep}[{lo:.2f}, {hi:.2f}]"


def _pct(value: float, significant: bool = False) -> str:
    if not np.isfinite(value):
        return "–"
    text = "0%" if round(value) == 0 else f"{value:+.0f}%"
    return text + (MARK if significant else "")


def _change(r: pd.Series) -> str:
    if r["role"] == "student" and r["method"] == "baseline":
        return "ref."
    if pd.isna(r["dt_pct"]) and pd.isna(r["dr_pct"]):
        return "–"
    return f"{_pct(r['dt_pct'], r['sig_t'])} / {_pct(r['dr_pct'], r['sig_r'])}"


def failure_cell(failed: int, runs: int) -> str:
    """A row's failure rate: '0/6', '2/6 (33%)'."""
    return f"{failed}/{runs}" + (f" ({failed / runs:.0%})" if failed else "")


def table_scenes(acc: pd.DataFrame, group: str) -> list[str]:
    """The scene columns of a group's table in order, 'average' last (left out when it repeats one scene)."""
    scenes = list(dict.fromkeys(acc[acc["group"] == group]["scene"]))
    return scenes[:1] if len(scenes) == 2 else scenes


def display_table(acc: pd.DataFrame, group: str, style: str = "plain",
                  scenes: list[str] | None = None) -> pd.DataFrame:
    """One group's leaderboard as strings: a row per (role, arch, method); per scene and the average (or the
    given `scenes`), columns for translation, rotation and Δ; the number of seeds per column last."""
    part = acc[acc["group"] == group]
    scenes = scenes or table_scenes(acc, group)
    part = part[part["scene"].isin(scenes)]
    labels = list(dict.fromkeys(part["label"]))  # accuracy_table already ordered the rows
    table = pd.DataFrame({"method": labels})
    seeds = pd.DataFrame(index=labels)
    for scene in scenes:
        cells = part[part["scene"] == scene].set_index("label")
        name = "average" if scene == AVERAGE else scene
        if len(scenes) == 1 and style in ("rich", "text"):  # the terminal's table title names the scene
            name = ""
        table[f"{name} t (m)".strip()] = [_metric_cell(cells.loc[lb], "t", style) if lb in cells.index else "–"
                                  for lb in labels]
        table[f"{name} r (deg)".strip()] = [_metric_cell(cells.loc[lb], "r", style) if lb in cells.index else "–"
                                    for lb in labels]
        table[f"{name} Δ t / r".strip()] = [_change(cells.loc[lb]) if lb in cells.index else "–" for lb in labels]
        seeds[name] = [str(cells.loc[lb, "n_seeds"]) if lb in cells.index else "–" for lb in labels]
    table["n"] = [row.iloc[0] if row.nunique() == 1 else " / ".join(row) for _, row in seeds.iterrows()]
    rates = part.drop_duplicates("label").set_index("label")
    table["failed"] = [failure_cell(rates.loc[lb, "row_failed"], rates.loc[lb, "row_runs"]) for lb in labels]
    return table


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def significance_display(comparison: pd.DataFrame, group: str) -> pd.DataFrame:
    """The group's tests against the student alone as strings: the scene-level test across scenes and the pooled
    test on these scenes (the single scene's test when there is one), with the failure rate."""
    part = comparison[comparison["group"] == group]
    levels = [("scenes", "across scenes"), ("pooled", "on these scenes")]
    if not (part["scene"] == AVERAGE).any():
        levels = [("seeds", "on this scene")]
    rows = []
    for (_arch, label), r in part.groupby(["arch", "label"], sort=False):
        out: dict[str, str] = {"method": label}
        for level, words in levels:
            lv = r[r["level"] == level]
            for x in lv.itertuples():
                name = "t" if x.metric == "t" else "r"
                col = f"Δ {name} {words} (95% CI)"
                if pd.isna(x.change_pct):
                    out[col], out[f"p {name} {words} (Holm)"] = "–", "–"
                    continue
                ci = f" [{_pct(x.ci_lo_pct)}, {_pct(x.ci_hi_pct)}]" if pd.notna(x.ci_lo_pct) else ""
                out[col] = f"{_pct(x.change_pct, x.direction != '')}{ci}"
                test = "" if x.test in ("t", "") else f" {x.test}"
                out[f"p {name} {words} (Holm)"] = (f"not tested ({x.reason})" if pd.isna(x.p)
                                                  else f"{_p(x.p)} ({_p(x.p_holm)}){test}")
        first = r[r["level"] == levels[-1][0]]
        if not first.empty:
            out["pairs"] = str(int(first["n_pairs"].max()))
            out["failed"] = failure_cell(int(first["n_failed"].max()), int(first["n_pairs"].max()))
        rows.append(out)
    return pd.DataFrame(rows)


SIGNIFICANCE_CAPTION = ("Against the student alone: geometric mean change of the error with its 95% t interval, the "
                        "test's p and, in brackets, Holm's adjusted p (one family: methods x translation and "
                        "rotation, tested rows only). Across scenes: per scene the mean log error ratio over seeds, "
                        "then a t-test over scenes, the claim about scenes like these (needs 3 or more scenes). On "
                        "these scenes: the paired t-test over every (scene, seed) pair, a result about these scenes "
                        "only. 'sign': no spread, so the exact sign test. † marks a claim: adjusted p < 0.05 and, "
                        "for 'better', no failed run. failed: runs of the row that failed or diverged, of its pairs.")


def efficiency_display(eff: pd.DataFrame) -> pd.DataFrame:
    """The efficiency table as strings; estimated rows say so and how."""
    def num(v: Any, digits: int = 2, est: bool = False) -> str:
        return "–" if pd.isna(v) else f"{'≈' if est else ''}{v:.{digits}f}"

    # A student's latency over its teacher's on the same device, backend, batch and crop (reports/front.py)
    ratios = "vs_teacher" in eff and eff["vs_teacher"].fillna("").astype(bool).any()
    rows = []
    for r in eff.itertuples():
        est = bool(r.estimated)
        note = f"(estimated: {r.note})" if est else ("" if pd.isna(r.note) else r.note)
        rows.append({"arch": r.arch, "device": r.device, "backend": r.backend,
                     "batch x crop": f"{r.batch} x {r.crop}", "params (M)": num(r.params_m),
                     "size (MiB)": num(r.size_mib, 1), "file (MiB)": num(r.file_mib, 1),
                     "GFLOPs": num(r.gflops), "latency median (ms)": num(r.latency_median_ms, est=est),
                     "p90 (ms)": num(r.latency_p90_ms, est=est),
                     **({"latency vs teacher": r.vs_teacher} if ratios else {}), "note": note})
    return pd.DataFrame(rows)


def footnote(counts: dict[str, int]) -> str:
    """What the tables count but do not show as numbers (failures), and what they leave out; '' when nothing."""
    lines = []
    if counts.get("of other presets"):
        lines.append(f"{counts['of other presets']} job(s) of other presets are not shown: presets are never "
                     "mixed in one table; choose one with `kdbench report --preset NAME`.")
    if counts.get("failed"):
        n = counts["failed"]
        lines.append(f"{n} run{' that' if n == 1 else 's that'} failed or diverged {'is' if n == 1 else 'are'} "
                     f"counted as {'a failure' if n == 1 else 'failures'} (column failed), never left out; see "
                     f"`kdbench runs --status failed`.")
    if counts.get("teachers per student seed", 0) > 1:
        lines.append(f"Crossed design (--teacher-seeds x --student-seeds, up to {counts['teachers per student seed']} "
                     "teachers per student seed): a KD cell's value per student seed is the geometric mean over its "
                     "teachers' runs; n counts student seeds and the intervals are over those, as do the claims' "
                     "IQM and P(better) (a student seed fails when any of its runs did; failed counts runs).")
    if counts.get("unfinished"):
        n = counts["unfinished"]
        lines.append(f"{n} unfinished {'job is' if n == 1 else 'jobs are'} not shown; see `kdbench runs`.")
    if counts.get("scored on validation"):
        n = counts["scored on validation"]
        lines.append(f"{n} {'job' if n == 1 else 'jobs'} scored on the validation split (`kdbench tune`, `train "
                     f"--eval-split val`) {'is' if n == 1 else 'are'} not shown, as on every test leaderboard: "
                     "`kdbench report --plots DIR` draws a tune's search; `kdbench run --hparams RUNS_DIR/tuned.toml` "
                     "trains its chosen values and scores them on test.")
    if counts.get("superseded"):
        lines.append(f"{counts['superseded']} earlier run(s) of a method and seed that ran again are not "
                     f"counted: the latest run counts.")
    return " ".join(lines)


def _groups(acc: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(acc["group"]))


def _group_heading(acc: pd.DataFrame, group: str) -> str:
    scenes = [s for s in dict.fromkeys(acc[acc["group"] == group]["scene"]) if s != AVERAGE]
    return f"{GROUP_TITLES.get(group, group)}: {', '.join(scenes)}"


def _caption(style: str) -> str:
    return CAPTION.replace("Bold: best", "*: best") if style == "text" else CAPTION


def render_markdown(acc: pd.DataFrame, eff: pd.DataFrame, counts: dict[str, int],
                    sig: Significance | None = None, claims: Claims | None = None) -> str:
    """The leaderboard as a markdown document (GitHub tables via tabulate); with `sig`, each group's
    significance paragraph and table follow its leaderboard."""
    from tabulate import tabulate

    def md(table: pd.DataFrame) -> str:
        table = table.map(lambda v: str(v).replace("|", "\\|"))  # a bare | would split the cell
        return tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)

    out = ["# kdbench leaderboard", ""]
    if acc.empty:
        out += ["No finished runs to show.", ""]
    else:
        out += [CAPTION, ""]
    for group in _groups(acc):
        out += [f"## {_group_heading(acc, group)}", "", md(display_table(acc, group, "markdown")), ""]
        if sig is not None and group in sig.sentences:
            out += [" ".join(sig.sentences[group]), ""]
            table = significance_display(sig.comparison, group)
            if not table.empty and sig.comparison.loc[sig.comparison["group"] == group, "tested"].any():
                out += [SIGNIFICANCE_CAPTION, "", md(table), ""]
        if claims is not None and (claims.table()["group"] == group).any():
            from kdbench.reports.claims import claims_caption, claims_display

            out += [claims_caption(claims), "", md(claims_display(claims, group)), ""]
    if not eff.empty:
        out += ["## Efficiency", "", EFFICIENCY_CAPTION, "", md(efficiency_display(eff)), ""]
    note = footnote(counts)
    if note:
        out += [f"_{note}_", ""]
    return "\n".join(out)


def terminal_renderables(acc: pd.DataFrame, eff: pd.DataFrame, counts: dict[str, int],
                         sig: Significance | None = None, style: str = "rich",
                         claims: Claims | None = None) -> list[Any]:
    """rich Tables (and text) for the terminal; best students in bold (style 'rich') or starred ('text')."""
    from rich.table import Table
    from rich.text import Text

    def rich_table(title: str, table: pd.DataFrame, caption: str | None = None) -> Table:
        t = Table(title=title, caption=caption, caption_justify="left")
        for col in table.columns:
            t.add_column(str(col), overflow="fold")
        for row in table.itertuples(index=False):
            t.add_row(*map(str, row))
        return t

    items: list[Any] = [Text(_caption(style) if not acc.empty else "No finished runs to show.")]
    for group in _groups(acc):
        # One table per scene (and the average): a group's columns side by side do not fit 80 columns.
        for scene in table_scenes(acc, group):
            title = f"{GROUP_TITLES.get(group, group)}: {scene}"
            if scene == AVERAGE:
                title = f"{_group_heading(acc, group)}: average"
            items.append(rich_table(title, display_table(acc, group, style, [scene])))
        if sig is not None and group in sig.sentences:
            items.append(Text(" ".join(sig.sentences[group])))
        if claims is not None and (claims.table()["group"] == group).any():
            from kdbench.reports.claims import claims_caption, claims_display

            items.append(rich_table(f"{GROUP_TITLES.get(group, group)}: claims", claims_display(claims, group),
                                    claims_caption(claims)))
    if not eff.empty:
        items.append(rich_table("Efficiency", efficiency_display(eff), EFFICIENCY_CAPTION))
    if footnote(counts):
        items.append(Text(footnote(counts), style="yellow"))
    return items


def analysed(df: pd.DataFrame, profiles: pd.DataFrame, claims: bool = True) -> tuple[Any, pd.DataFrame,
                                                                                   dict[str, int], pd.DataFrame, Any]:
    """What every rendering shows, computed once: (significance, accuracy table, footnote counts, efficiency table
    with latency vs teacher, claims or None when `claims` is False)."""
    from kdbench.reports import stats
    from kdbench.reports.claims import analyse_claims

    sig = stats.analyse(df)
    acc = accuracy_table(df, sig.comparison)
    eff = with_teacher_latency(efficiency_table(profiles), acc)
    return sig, acc, not_shown(df), eff, analyse_claims(df) if claims else None


def print_terminal(df: pd.DataFrame, profiles: pd.DataFrame, console: Any = None) -> None:
    """Print the whole report on a rich Console (default: standard output at the terminal's own width, so
    tables fold their cells instead of wrapping lines; best students in bold)."""
    from rich.console import Console

    console = console or Console()
    sig, acc, counts, eff, claims = analysed(df, profiles)
    for item in terminal_renderables(acc, eff, counts, sig, claims=claims):
        console.print(item)


def render_terminal(acc: pd.DataFrame, eff: pd.DataFrame, counts: dict[str, int], width: int = 200,
                    sig: Significance | None = None, claims: Claims | None = None) -> str:
    """The terminal rendering as plain text (for --out FILE): no styles, so best students are starred."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    for item in terminal_renderables(acc, eff, counts, sig, style="text", claims=claims):
        console.print(item)
    return console.export_text()


def render_csv(acc: pd.DataFrame, eff: pd.DataFrame, table: str = "accuracy", sig: Significance | None = None,
               claims: Claims | None = None) -> str:
    """One table as CSV (numbers, not strings): 'accuracy' (per cell: seeds, mean, std and 95% interval of
    the median errors, means over seeds of the mean errors and threshold accuracies, Δ and marks),
    'efficiency', or 'significance' (the paired tests against the baseline)."""
    if table not in CSV_TABLES:
        raise KdbenchError(f"unknown table {table!r}: use {', '.join(CSV_TABLES)}")
    if table == "efficiency":
        return eff.to_csv(index=False)
    if table == "claims":  # verdicts, power, bootstrap intervals, variance shares (kdbench.reports.claims)
        return (claims.table() if claims is not None else pd.DataFrame()).to_csv(index=False)
    if table == "significance":
        from kdbench.reports import stats

        comparison = sig.comparison if sig is not None else pd.DataFrame(columns=stats.COMPARISON_COLUMNS)
        return comparison.to_csv(index=False)
    return acc.to_csv(index=False)


def render_json(acc: pd.DataFrame, eff: pd.DataFrame, counts: dict[str, int], sig: Significance | None = None,
                claims: Claims | None = None) -> str:
    """{caption, accuracy, efficiency, significance, friedman, posthoc, summary, claims, not_shown, footnote} (NaN as
    null; infinite values as null too: JSON has no infinity)."""
    def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
        return json.loads(frame.to_json(orient="records", double_precision=15))

    doc = {"caption": CAPTION, "efficiency_caption": EFFICIENCY_CAPTION, "accuracy": records(acc),
           "efficiency": records(eff), "not_shown": counts, "footnote": footnote(counts)}
    if sig is not None:
        posthoc = sig.posthoc if sig.posthoc is not None else pd.DataFrame()
        doc.update(significance_caption=SIGNIFICANCE_CAPTION, significance=records(sig.comparison),
                   friedman=records(sig.ranks), posthoc=records(posthoc), summary=sig.sentences)
    if claims is not None:
        from kdbench.reports.claims import claims_caption

        doc.update(claims_caption=claims_caption(claims), claims=records(claims.table()),
                   bootstrap_errors=records(claims.errors), rope_pct=100 * claims.rope,
                   bootstrap_seed=claims.bootstrap_seed)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render(df: pd.DataFrame, profiles: pd.DataFrame, fmt: str = "markdown", table: str = "accuracy") -> str:
    """The whole report (accuracy per group with its statistics, efficiency, footnote) from the results and
    profiles frames; `table` picks the CSV table."""
    if fmt not in FORMATS:
        raise KdbenchError(f"unknown report format {fmt!r}: use {', '.join(FORMATS)}")
    # a CSV of another table never reads the claims (their bootstrap is the costly part)
    sig, acc, counts, eff, claims = analysed(df, profiles, claims=fmt != "csv" or table == "claims")
    if fmt == "markdown":
        return render_markdown(acc, eff, counts, sig, claims)
    if fmt == "terminal":
        return render_terminal(acc, eff, counts, sig=sig, claims=claims)
    if fmt == "csv":
        return render_csv(acc, eff, table, sig, claims)
    return render_json(acc, eff, counts, sig, claims)
