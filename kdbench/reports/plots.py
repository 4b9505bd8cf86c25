"""Figures for `kdbench report --plots DIR`: performance profiles and critical-difference diagrams per group,
accuracy against latency and parameters where several student architectures make that comparison mean something.

matplotlib and scikit-posthocs are the optional `plots` extra (`pip install kdbench[plots]`), imported only here
and only when plotting. Figures are drawn on matplotlib.figure.Figure objects, never through pyplot's state.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench.errors import KdbenchError
from kdbench.reports import bootstrap, stats
from kdbench.reports.front import device_points
from kdbench.reports.leaderboard import (
    AVERAGE,
    GROUP_TITLES,
    accuracy_table,
    efficiency_table,
    row_labels,
    shown_jobs,
)


def _figure(**kwargs: Any):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise KdbenchError("--plots needs matplotlib: pip install 'kdbench[plots]' (or pip install "
                           "matplotlib)") from None
    return Figure(**kwargs)


def _posthocs():
    try:
        import scikit_posthocs
    except ImportError:
        raise KdbenchError("critical-difference diagrams need scikit-posthocs: pip install 'kdbench[plots]' "
                           "(or pip install scikit-posthocs)") from None
    return scikit_posthocs


def _warn(message: str) -> None:
    print(f"kdbench: plots: {message}", file=sys.stderr)


# data ---------------------------------------------------------------------------------------------------
def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the points no other point beats on both x and y (lower is better), ordered by x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], ys[i]))
    front, best_y = [], float("inf")
    for i in order:
        if ys[i] < best_y:
            front.append(i)
            best_y = ys[i]
    return front


def reference_profiles(eff: pd.DataFrame, archs: set[str]) -> tuple[pd.DataFrame, str]:
    """Measured batch-1 rows of the one (device, backend, crop) covering most of `archs`, and its name."""
    measured = eff[(eff["estimated"] == 0) & (eff["batch"] == 1) & eff["arch"].isin(archs)
                   & eff["latency_median_ms"].notna()]
    if measured.empty:
        return measured, ""
    # Latencies are only comparable on one device, backend and input size; ties go to torch, then crop.
    cover = measured.groupby(["device", "backend", "crop"])["arch"].nunique().reset_index()
    cover["torch"] = cover["backend"] == "torch"
    best = cover.sort_values(["arch", "torch", "crop"], ascending=False).iloc[0]
    rows = measured[(measured["device"] == best["device"]) & (measured["backend"] == best["backend"])
                    & (measured["crop"] == best["crop"])]
    return rows.drop_duplicates("arch", keep="last"), f"{best['backend']} on {best['device']}, " \
                                                      f"crop {best['crop']}"


# figures ------------------------------------------------------------------------------------------------
def profile_plot(jobs: pd.DataFrame, group: str, arch: str, path: Path, seed: int = bootstrap.BOOTSTRAP_SEED) -> Path:
    """Write `profile_figure` to `path`."""
    profile_figure(jobs, group, arch, seed).savefig(path, dpi=110)
    return path


def profile_figure(jobs: pd.DataFrame, group: str, arch: str, seed: int = bootstrap.BOOTSTRAP_SEED):
    """Performance profiles (Agarwal et al. 2021) of one group's `arch` students: per row the share of runs whose
    median error, relative to the baseline's geometric mean on the same scene (1 = the baseline's level, so
    scenes of any scale count alike), is at most x; bands: 95% stratified bootstrap (seeds resampled within
    scenes, kdbench.reports.bootstrap), instead of CDFs that pooled seeds without bands."""
    fig = _figure(figsize=(11, 4.8), layout="constrained")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axes = fig.subplots(1, 2)
    n_scenes = 0
    for ax, (col, what) in zip(axes, stats.METRICS.values()):
        errors = bootstrap.normalised_errors(jobs, group, arch, col)
        values = np.concatenate([v for rows in errors.values() for v in rows.values()] or [np.ones(1)])
        values = values[np.isfinite(values) & (values > 0)]
        lo, hi = (values.min(), values.max()) if len(values) else (0.5, 2.0)
        taus = np.geomspace(min(lo, 0.9) / 1.1, max(hi, 1.1) * 1.1, 200)
        for label, strata in errors.items():
            n_scenes = max(n_scenes, len(strata))
            share, band_lo, band_hi = bootstrap.performance_profile(list(strata.values()), taus, seed=seed)
            runs = sum(len(v) for v in strata.values())
            (line,) = ax.step(taus, share, where="post", label=f"{label} ({runs} runs)")
            ax.fill_between(taus, band_lo, band_hi, step="post", alpha=0.15, color=line.get_color(), linewidth=0)
        ax.axvline(1.0, color="0.35", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"median {what} error / baseline's geometric mean on the scene (log scale)")
        ax.set_ylabel("share of runs at most x")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{GROUP_TITLES.get(group, group)}, {arch} students: performance profiles over {n_scenes} "
                 f"scene{'s' if n_scenes != 1 else ''}; bands: 95% stratified bootstrap (seed {seed}); "
                 f"dashed: the baseline's level", fontsize=9)
    return fig


def cd_title(group: str, arch: str, metric: str, n: int, fried: dict[str, Any], left_out: list[str]) -> str:
    """The diagram's title: what is ranked over how many scenes, the Friedman result with its significance clause
    (or that every row ties, never 'χ² = nan'), what the bars mean, the rows left out."""
    what = stats.METRICS[metric][1]
    if fried["all_tied"]:
        result = "every row ties on every scene: Friedman's test has nothing to rank (no difference)"
    else:
        verdict = "significant" if fried["p"] < stats.ALPHA else "not significant"
        result = (f"Friedman χ² = {fried['statistic']:.2f}, Iman-Davenport F = {fried['f_statistic']:.2f}, "
                  f"permutation p = {fried['p']:.3g} ({verdict} at {stats.ALPHA})")
    floor = ("" if stats.min_wilcoxon_p(n) < stats.ALPHA else
             f"; with {n} scenes no pair can differ (smallest p {stats.min_wilcoxon_p(n):.3g})")
    title = (f"{GROUP_TITLES.get(group, group)}, {arch} students: mean rank of median {what} error (1 = best) "
             f"over {n} scenes (seeds averaged, failures last)\n{result}\n"
             f"bars join rows pairwise Wilcoxon tests (Holm) cannot tell apart at {stats.ALPHA}{floor}")
    if left_out:
        title += f"\nleft out (no result on every scene): {', '.join(left_out)}"
    return title


def cd_diagram(df: pd.DataFrame, group: str, arch: str, metric: str, path: Path) -> Path | None:
    """Critical-difference diagram of the students of one group and architecture: mean rank over the scenes
    (blocks, `stats.block_matrix`), bars joining rows that the pairwise Wilcoxon signed-rank tests, Holm-corrected
    (`stats.pairwise_wilcoxon`), cannot tell apart at 0.05; None when there are fewer than 3 rows or 2 scenes."""
    sp = _posthocs()
    wide, left_out = stats.block_matrix(df, group, arch, metric)
    k, n = wide.shape[1], len(wide)
    if k < 3 or n < 2:
        return None
    ranks = wide.rank(axis=1, method="average").mean()
    posthoc = stats.pairwise_wilcoxon(wide)
    matrix = pd.DataFrame(1.0, index=list(wide.columns), columns=list(wide.columns))
    for x in posthoc.itertuples():
        matrix.loc[x.a, x.b] = matrix.loc[x.b, x.a] = x.p_holm
    fried = stats.friedman_test(wide)
    fig = _figure(figsize=(8, 1.6 + 0.28 * k), layout="constrained")
    ax = fig.subplots()
    sp.critical_difference_diagram(ranks, matrix, ax=ax, alpha=stats.ALPHA)
    title = cd_title(group, arch, metric, n, fried, left_out)
    ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def tradeoff_plot(points: pd.DataFrame, xcol: str, xlabel: str, title: str, path: Path) -> Path:
    """Write `tradeoff_figure` to `path`."""
    tradeoff_figure(points, xcol, xlabel, title).savefig(path, dpi=110)
    return path


def tradeoff_figure(points: pd.DataFrame, xcol: str, xlabel: str, title: str):
    """Average median translation error against `xcol`, Pareto front marked. Per student architecture only
    its baseline and its best KD student are labelled (the other methods share their x and are grey dots)."""
    fig = _figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    students = points[points["role"] == "student"]
    teachers = points[points["role"] == "teacher"]
    labelled = pd.concat([students[students["method"] == "baseline"],
                          students[students["method"] != "baseline"].sort_values("t_mean").groupby("arch").head(1),
                          teachers])
    others = students.drop(labelled.index, errors="ignore")
    if not others.empty:
        ax.scatter(others[xcol], others["t_mean"], color="0.7", s=14, zorder=2, label="other KD students")
    for part, marker, name in ((labelled[labelled["role"] == "student"], "o", "students: baseline and best KD"),
                               (teachers, "s", "teachers")):
        if not part.empty:  # no legend entry for what is not drawn
            ax.scatter(part[xcol], part["t_mean"], marker=marker, label=name, zorder=3)
    for p in labelled.itertuples():
        ax.annotate(p.label, (getattr(p, xcol), p.t_mean), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = points.iloc[pareto_front(points[xcol].tolist(), points["t_mean"].tolist())]
    ax.step(front[xcol], front["t_mean"], where="post", color="crimson", alpha=0.6, label="Pareto front")
    ax.scatter(front[xcol], front["t_mean"], s=160, facecolors="none", edgecolors="crimson", zorder=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("median translation error (m), geometric mean over scenes and seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def tradeoff_points(acc: pd.DataFrame, eff: pd.DataFrame, group: str) -> tuple[pd.DataFrame, str]:
    """A group's average rows joined with latency and params of their architecture."""
    avg = acc[(acc["group"] == group) & (acc["scene"] == AVERAGE)]
    ref, where = reference_profiles(eff, set(avg["arch"]))
    # torch rows count the model's own parameters; ONNX-only rows may count BatchNorm folded away.
    params = eff.sort_values("backend", key=lambda b: b != "torch", kind="stable").drop_duplicates("arch")
    params = params[["arch", "params_m"]]
    points = avg.merge(params, on="arch", how="left")
    points = points.merge(ref[["arch", "latency_median_ms"]], on="arch", how="left")
    return points, where


def write_plots(df: pd.DataFrame, profiles: pd.DataFrame, out_dir: str | os.PathLike,
                runs_dir: str | os.PathLike = "runs") -> list[Path]:
    """Write every figure the data allows into `out_dir` (PNG); returns the paths written."""
    _figure()  # fail early, before any work, when matplotlib or scikit-posthocs is missing
    _posthocs()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = shown_jobs(df)
    jobs = jobs.assign(label=row_labels(jobs))
    acc, eff = accuracy_table(df), efficiency_table(profiles)
    written = []
    written += _profiles(jobs, out, int(df.attrs.get("bootstrap_seed", bootstrap.BOOTSTRAP_SEED)))
    for group in dict.fromkeys(acc["group"]):
        written += _group_cd_diagrams(df, jobs, group, out)
        written += _group_tradeoffs(acc, eff, group, out)
        written += _group_fronts(acc, eff, group, out)
    from kdbench.reports.tuning import tuning_plots

    written += tuning_plots(runs_dir, out)  # kdbench tune's studies, where the runs folder has any
    return written


def _profiles(jobs: pd.DataFrame, out: Path, seed: int) -> list[Path]:
    """profile-<group>[-<arch>].png per group and student architecture that has a baseline."""
    written = []
    students = jobs[jobs["role"] == "student"]
    for group, part in students.groupby("group", sort=False):
        archs = list(dict.fromkeys(part["arch"]))
        for arch in archs:
            if not (part[part["arch"] == arch]["method"] == "baseline").any():
                _warn(f"{group}: no {arch} baseline student, so no performance profile (errors are shown relative "
                      "to the baseline's)")
                continue
            suffix = "" if len(archs) == 1 else f"-{arch}"
            written.append(profile_plot(students, group, arch, out / f"profile-{group}{suffix}.png", seed))
    return written


def _group_cd_diagrams(df: pd.DataFrame, jobs: pd.DataFrame, group: str, out: Path) -> list[Path]:
    written = []
    students = jobs[(jobs["group"] == group) & (jobs["role"] == "student")]
    for arch in dict.fromkeys(students["arch"]):
        for metric in stats.METRICS:
            suffix = "" if students["arch"].nunique() == 1 else f"-{arch}"
            path = cd_diagram(df, group, arch, metric, out / f"cd-{group}{suffix}-{metric}.png")
            if path is None:
                _warn(f"{group}: a critical-difference diagram needs 3 or more {arch} students with results on "
                      f"2 or more scenes; none drawn")
                break
            written.append(path)
    return written


def _group_tradeoffs(acc: pd.DataFrame, eff: pd.DataFrame, group: str, out: Path) -> list[Path]:
    points, where = tradeoff_points(acc, eff, group)
    student_archs = sorted(set(points.loc[points["role"] == "student", "arch"]))
    if len(student_archs) < 2:
        # Every student would sit at one x: the plot would only restate the leaderboard's column.
        _warn(f"{group}: one student architecture ({', '.join(student_archs) or 'none'}), so no accuracy vs "
              f"latency or parameters plot (run with another --student-arch to compare architectures)")
        return []
    n_scenes = acc[(acc["group"] == group) & (acc["scene"] != AVERAGE)]["scene"].nunique()
    title = f"{GROUP_TITLES.get(group, group)} ({n_scenes} scene{'s' if n_scenes > 1 else ''})"
    unmeasured = sorted(set(points.loc[points["latency_median_ms"].isna(), "arch"]))
    if unmeasured:
        _warn(f"{group}: no measured batch-1 latency for {', '.join(unmeasured)} (run `kdbench profile "
              f"--archs {','.join(unmeasured)}`); those rows are left out of the latency plot")
    written = []
    lat = points.dropna(subset=["latency_median_ms"])
    if lat.empty:
        _warn(f"{group}: no measured latency for its architectures (run `kdbench profile`), no latency plot")
    else:
        written.append(tradeoff_plot(lat, "latency_median_ms", f"latency (ms, batch 1, {where})",
                                     f"{title}: accuracy vs latency", out / f"pareto-latency-{group}.png"))
    par = points.dropna(subset=["params_m"])
    if par.empty:
        _warn(f"{group}: no profile rows for its architectures (run `kdbench profile`), no parameters plot")
    else:
        written.append(tradeoff_plot(par, "params_m", "parameters (M)", f"{title}: accuracy vs parameters",
                                     out / f"pareto-params-{group}.png"))
    return written


def front_figure(points: pd.DataFrame, where: str):
    """Median translation and rotation error against latency, one point per (arch, method), fronts marked."""
    fig = _figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2)
    archs = list(dict.fromkeys(points["arch"]))
    colours = {a: f"C{i % 10}" for i, a in enumerate(archs)}
    for ax, metric, unit in zip(axes, ("t", "r"), ("translation error (m)", "rotation error (°)")):
        for arch in archs:
            part = points[points["arch"] == arch]
            ax.scatter(part["latency_median_ms"], part[f"{metric}_mean"], color=colours[arch], s=22, zorder=3,
                       marker="o" if (part["role"] == "student").all() else "s", label=arch)
        ys = points[f"{metric}_mean"].astype(float)
        close = 0.04 * float(ys.max() - ys.min() or 1.0)  # labels nearer than this in y would overprint
        for _, part in points.groupby("arch", sort=False):  # one arch: one latency; close points, one label
            clusters: list[list] = []
            for p in part.sort_values(f"{metric}_mean", ascending=False, kind="stable").itertuples():
                y = getattr(p, f"{metric}_mean")
                if clusters and abs(getattr(clusters[-1][-1], f"{metric}_mean") - y) < close:
                    clusters[-1].append(p)
                else:
                    clusters.append([p])
            for c in clusters:  # names top to bottom, as the points are
                y = sum(getattr(p, f"{metric}_mean") for p in c) / len(c)
                ax.annotate("\n".join(p.method if p.role == "student" else "teacher" for p in c),
                            (c[0].latency_median_ms, y), fontsize=6, xytext=(4, 0), textcoords="offset points",
                            va="center", linespacing=1.0)
        front = points[points[f"on_front_{metric}"]].sort_values("latency_median_ms")
        ax.step(front["latency_median_ms"], front[f"{metric}_mean"], where="post", color="crimson", alpha=0.6,
                label="Pareto front")
        ax.scatter(front["latency_median_ms"], front[f"{metric}_mean"], s=150, facecolors="none",
                   edgecolors="crimson", zorder=4)
        ax.set_xlabel(f"latency (ms, batch 1, {where})", fontsize=8)
        ax.set_ylabel(f"median {unit}, geometric mean over scenes and seeds", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def _group_fronts(acc: pd.DataFrame, eff: pd.DataFrame, group: str, out: Path) -> list[Path]:
    avg = acc[(acc["group"] == group) & (acc["scene"] == AVERAGE)]
    written = []
    for (device, backend, crop), points in device_points(avg, eff).items():
        where = f"{backend} on {device}, crop {crop}"
        if points["estimated"].astype(bool).any():
            notes = "; ".join(dict.fromkeys(points.loc[points["estimated"].astype(bool), "note"].astype(str)))
            where += f"; ESTIMATED, not measured: {notes}"
        fig = front_figure(points, where if len(where) < 140 else where[:137] + "...")
        fig.suptitle(f"{GROUP_TITLES.get(group, group)}: accuracy-latency front ({backend}, {device})", fontsize=10)
        slug = "".join(c if c.isalnum() else "_" for c in f"{device}-{backend}-{crop}").strip("_")
        path = out / f"front-{group}-{slug}.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written
