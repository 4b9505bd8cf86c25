"""Reports of `kdbench tune`: trials, best-so-far curves, parameter importances, KD-weight sensitivity, and
which leaderboard rows were tuned. Frames in, frames out; the plot and HTML functions only draw them.

Reads the study files (RUNS_DIR/tune/*.sqlite, through Optuna when it is installed) and the results store,
nothing else. Tuning jobs (eval_split "val") never reach the leaderboard (leaderboard.load_results).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.config import LR_KEY, TUNE_DIR

TRIAL_COLUMNS = ["file", "study", "row", "method", "group", "trial", "state", "value", "best_so_far"]


def _config(text: Any) -> dict[str, Any]:
    try:
        return json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}


def with_tuning(jobs: pd.DataFrame) -> pd.DataFrame:
    """Jobs with their `tuning` label (how their hyperparameters were chosen); the config column dropped."""
    if "config" not in jobs:
        return jobs.assign(tuning="")
    tuning = jobs["config"].map(lambda c: _config(c).get("tuning") or "")
    return jobs.assign(tuning=tuning).drop(columns=["config"])


def label_rows(acc: pd.DataFrame, jobs: pd.DataFrame) -> pd.Series:
    """Row labels with how their hyperparameters were chosen, where any row of the group was tuned:
    'resnet18 sckd (tuned on validation, 20 trials)' or 'resnet18 baseline (no KD) (defaults)'."""
    labels = acc["label"].copy()
    if acc.empty or "tuning" not in jobs or not (jobs["tuning"].fillna("") != "").any():
        return labels
    notes = jobs[jobs["role"] == "student"].groupby(["group", "arch", "method"])["tuning"].agg(
        lambda s: "; ".join(sorted({t for t in s.fillna("")})) or "")
    tuned_groups = {g for (g, _, _), n in notes.items() if n}
    for i, r in acc.iterrows():
        if r["role"] != "student" or r["group"] not in tuned_groups:
            continue
        note = notes.get((r["group"], r["arch"], r["method"]), "")
        labels[i] = f"{r['label']} ({note.strip('; ') or 'defaults'})"
    return labels


def tuned_values(runs_dir: str | os.PathLike) -> pd.DataFrame:
    """The chosen values the finished tuned jobs trained with: row, scene, tuning, lr and method params."""
    from kdbench.reports.store import ResultsStore

    with ResultsStore(runs_dir, create=False) as store:
        jobs = pd.read_sql_query("SELECT method, scene, seed, config FROM jobs WHERE status = 'done'", store.conn)
    rows = []
    for r in jobs.itertuples():
        c = _config(r.config)
        if c.get("tuning") and c.get("eval_split", "test") != "val":
            values = {LR_KEY: c.get("lr"), **(c.get("method_params") or {})}
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            rows.append({"row": r.method, "scene": r.scene, "tuning": c["tuning"], "values": shown})
    cols = ["row", "scene", "tuning", "values"]
    return pd.DataFrame(rows, columns=cols).drop_duplicates().reset_index(drop=True)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def study_files(runs_dir: str | os.PathLike) -> list[Path]:
    """The study files of a runs folder."""
    return sorted((Path(runs_dir) / TUNE_DIR).glob("*.sqlite"))


def _studies(runs_dir: str | os.PathLike) -> list[tuple[Path, Any]]:
    try:
        import optuna
    except ImportError:
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = []
    for path in study_files(runs_dir):
        url = f"sqlite:///{path.resolve()}"
        for summary in optuna.get_all_study_summaries(url):
            out.append((path, optuna.load_study(study_name=summary.study_name, storage=url)))
    return out


def load_trials(runs_dir: str | os.PathLike, studies: list | None = None) -> pd.DataFrame:
    """One row per trial of every study: row, group, number, state, value, best so far, and param_* columns
    (`studies`: those `_studies(runs_dir)` loaded already)."""
    rows = []
    for path, study in _studies(runs_dir) if studies is None else studies:
        best = math.inf
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if t.user_attrs.get("stale"):
                continue  # left by a killed process and asked again: not a trial of the budget
            value = t.value if t.value is not None else math.nan
            if t.state.name == "COMPLETE":
                best = min(best, value)
            rows.append({"file": path.name, "study": study.study_name, "row": study.user_attrs.get("row"),
                         "method": study.user_attrs.get("method"), "group": study.user_attrs.get("group"),
                         "trial": t.number, "state": t.state.name, "value": value,
                         "best_so_far": best if math.isfinite(best) else math.nan,
                         **{f"param_{k}": v for k, v in t.params.items()}})
    df = pd.DataFrame(rows)
    return df if not df.empty else pd.DataFrame(columns=TRIAL_COLUMNS)


def importances(runs_dir: str | os.PathLike, studies: list | None = None) -> pd.DataFrame:
    """optuna.importance.get_param_importances per study (fANOVA; needs 2 or more complete trials)."""
    rows = []
    for _, study in _studies(runs_dir) if studies is None else studies:
        import optuna  # there are studies, so optuna is installed

        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if len(complete) < 2:
            continue
        try:
            found = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):  # e.g. every trial the same value
            continue
        rows += [{"row": study.user_attrs.get("row"), "group": study.user_attrs.get("group"), "param": k,
                  "importance": float(v)} for k, v in found.items()]
    return pd.DataFrame(rows, columns=["row", "group", "param", "importance"])


def sensitivity(trials: pd.DataFrame) -> pd.DataFrame:
    """KD weights against validation error: one row per (complete trial, method weight), lr left out."""
    cols = ["row", "group", "param", "weight", "value"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    done = trials[trials["state"] == "COMPLETE"]
    params = [c for c in done.columns if c.startswith("param_") and c != f"param_{LR_KEY}"]
    long = done.melt(id_vars=["row", "group", "value"], value_vars=params, var_name="param", value_name="weight")
    long = long.dropna(subset=["weight"]).assign(param=lambda d: d["param"].str.removeprefix("param_"))
    return long[cols].reset_index(drop=True)


# plots ---------------------------------------------------------------------------------------------------
def tuning_plots(runs_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Per scene group: best-so-far curves, importances, KD-weight sensitivity (PNG); [] without studies."""
    from matplotlib.figure import Figure

    studies = _studies(runs_dir)  # opened once for the curves and the importances
    trials = load_trials(runs_dir, studies)
    if trials.empty:
        return []
    out = Path(out_dir)
    written = []
    imp, sens = importances(runs_dir, studies), sensitivity(trials)
    for group, part in trials.groupby("group"):
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for row, t in part.groupby("row", sort=False):
            t = t.sort_values("trial")
            line = ax.plot(range(1, len(t) + 1), t["best_so_far"], drawstyle="steps-post", label=row)[0]
            ax.scatter(range(1, len(t) + 1), t["value"], s=12, color=line.get_color(), alpha=0.5)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel="trial", ylabel="validation error (geometric mean)", yscale="log",
               title=f"{group}: validation error per trial (line: best so far)")
        _plain_log_ticks(ax.yaxis)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / f"tune-curve-{group}.png"))
        g_imp = imp[imp["group"] == group]
        if not g_imp.empty:
            fig = Figure(figsize=(6, 0.6 + 0.35 * len(g_imp)))
            ax = fig.subplots()
            ax.barh([f"{r.row}: {r.param}" for r in g_imp.itertuples()], g_imp["importance"])
            ax.set(xlabel="importance (Optuna fANOVA)", title=f"{group}: hyperparameter importance")
            written.append(_save(fig, out / f"tune-importance-{group}.png"))
        g_sens = sens[sens["group"] == group]
        if not g_sens.empty:
            fig = Figure(figsize=(6, 4))
            ax = fig.subplots()
            for (row, param), s in g_sens.groupby(["row", "param"], sort=False):
                ax.scatter(s["weight"], s["value"], label=f"{row}: {param}", s=18)
            ax.set(xscale="log", yscale="log", xlabel="KD weight (trial's value)",
                   ylabel="validation error", title=f"{group}: sensitivity to the KD weights")
            _plain_log_ticks(ax.yaxis)
            ax.legend(fontsize=8)
            written.append(_save(fig, out / f"tune-sensitivity-{group}.png"))
    return written


def _plain_log_ticks(axis: Any) -> None:
    """Label a log axis' ticks as plain numbers (3, 4), not as 4x10^0; call after the data is drawn."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:.3g}")
    axis.set_major_formatter(plain)
    low, high = sorted(axis.get_view_interval())
    if low > 0 and high / low < 10:  # over a decade the minor ticks would crowd: the decades are labelled
        axis.set_minor_formatter(plain)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


PLOT_TITLES = (("tune-curve-", "validation error per tuning trial, best so far"),
               ("tune-importance-", "hyperparameter importance in the tuning studies"),
               ("tune-sensitivity-", "validation error against the KD weights tried"))


def tuned_section_html(runs_dir: str | os.PathLike, esc: Any) -> list[str]:
    """The HTML page's section of chosen values (nothing when no tuned job is in the store)."""
    try:
        values = tuned_values(runs_dir)
    except Exception:  # a store the page cannot read has been reported by the leaderboard already
        return []
    if values.empty:
        return []
    out = ['<section id="tuned"><h2>Tuned hyperparameters</h2>',
           '<p class="meta">Chosen by <code>kdbench tune</code> on the validation split (carved from the training '
           "split), trained on the full training split and scored on test.</p><table><thead><tr>"
           + "".join(f"<th>{esc(c)}</th>" for c in values.columns) + "</tr></thead><tbody>"]
    for r in values.itertuples(index=False):
        out.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>")
    out.append("</tbody></table></section>")
    return out
