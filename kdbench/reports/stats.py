"""Statistics of the leaderboard: one estimator (geometric-mean error ratios over matched pairs), the claims it
supports, and the rank tests. Takes the results frame (`leaderboard.load_results`) and returns frames; nothing here
renders. The tests are scipy.stats'. Choices, and why:

- The estimator: every KD student row is paired with the no-KD student (`baseline`) of the same architecture on
  the (scene, seed) runs both have (same seed: same data order and, for KD, the same teacher). The effect of one
  pair is the log error ratio log(e_method / e_baseline): scenes differ in scale (SynthRoom's errors are about
  0.5 m, SynthStreet's 4 m), a ratio counts a 10% gain the same on every scene, and the log makes the positive,
  right-skewed errors symmetric. Every change kdbench prints (Δ columns, average column, significance table,
  sentences) is exp(mean log ratio) - 1, the geometric-mean ratio, with its t interval on the log scale.
- Failures are results (`log_ratios`): a failed job or a run with non-finite medians (diverged) is a pair that
  cannot enter a mean, so changes are over the finished pairs and the failures are counted beside them (a
  failure rate per row in every table). A row that failed on any pair is never called better; in rank tests a
  failure is the worst error (ranked last). A zero error gives a log ratio of -inf or +inf (no ratio can say by
  how much); such pairs are counted and left out of the mean, zero on both sides is a tie.
- Three levels of claim. The headline is scene-level (`level` 'scenes'): per scene the mean log ratio over seeds
  (`scene_effects`), then a one-sample t-test over scenes, so the claim is about scenes like these, with the
  scene x method interaction in its error. It needs MIN_SCENES = 3 scenes: with 2 the scene-to-scene spread has
  one degree of freedom (t's 97.5% point is 12.7) and one scene's opposite effect cannot be told from noise;
  below that the page says the scenes are too few. The pooled test (`level` 'pooled': all (scene, seed) pairs,
  paired t-test with n - 1 degrees of freedom) is kept, labelled "on these scenes": it says nothing about other
  scenes, and its wording never says "significantly better". Per-scene tests (`level` 'seeds') are exploratory.
- Zero spread: the same log ratio on every pair leaves t undefined; the exact sign test (`scipy.stats.binomtest`)
  is used then (p = 2 / 2^n with all n signs alike). Identical errors on every pair are a tie, p = 1. The t-test,
  not Wilcoxon's signed-rank test, is the main test: Wilcoxon's exact p over n pairs cannot go below 2 / 2^n
  (0.031 for 6), so with the few seeds a benchmark affords nothing could survive the correction; its p is
  reported as a check.
- Holm's step-down correction, one family per level: for the headline (and the pooled test) methods x
  {translation, rotation} of a group and architecture; per scene the same within the scene. Only tested rows
  count in a family and in the sentence that names its size.
- Friedman (Demšar 2006): per group, architecture and metric the blocks are scenes (independent data sets), the
  value of a row in a block its geometric mean error over seeds (a failed run makes it +inf: ranked last). Rows
  without a result on every scene are left out and named (blocks are never dropped). The p-value is a
  permutation p (ranks permuted within blocks, N_PERMUTATIONS draws, fixed seed), exact enough for the 2-6 blocks
  a benchmark has, where the chi-square and Iman-Davenport F approximations are poor; both statistics are
  reported. Post hoc: pairwise Wilcoxon signed-rank tests over the blocks with Holm (Benavoli et al. 2016), not
  Nemenyi, whose verdict on two rows depends on the others in the pool; `plots.py` draws the critical-difference
  diagram's cliques from them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sst

from kdbench.reports.crossed import per_student_seed
from kdbench.reports.rows import AVERAGE, GROUP_TITLES, result_jobs, row_labels

ALPHA = 0.05
CONFIDENCE = 0.95
MIN_SEEDS = 2
MIN_PAIRS = 3
MIN_SCENES = 3
N_PERMUTATIONS = 20000
METRICS = {"t": ("median_t", "translation"), "r": ("median_r", "rotation")}
MARK = "†"
TEST_NAME = "paired t-test on log error ratios"
LEVELS = ("seeds", "scenes", "pooled")  # per scene over seeds; headline over scenes; pooled pairs on these scenes

COMPARISON_COLUMNS = ["group", "scene", "level", "arch", "teacher_arch", "method", "label", "metric", "n_pairs",
                      "n_seeds", "n_scenes", "n_used", "n_failed", "n_base_failed", "n_zero", "n_ties",
                      "failure_rate", "change_pct", "ci_lo_pct", "ci_hi_pct", "test", "statistic", "p",
                      "wilcoxon_p", "n_tests", "p_holm", "significant", "direction", "tested", "reason"]
FRIEDMAN_COLUMNS = ["group", "arch", "metric", "n_blocks", "n_rows", "statistic", "f_statistic", "f_p", "p",
                    "all_tied", "mean_ranks", "left_out"]
PAIRWISE_COLUMNS = ["group", "arch", "metric", "a", "b", "n_blocks", "statistic", "p", "p_holm", "significant"]


# basic pieces -------------------------------------------------------------------------------------------------
def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean of `values`; (nan, nan) with fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    sem = sst.sem(x)
    if sem == 0:
        return float(x.mean()), float(x.mean())
    lo, hi = sst.t.interval(confidence, len(x) - 1, loc=x.mean(), scale=sem)
    return float(lo), float(hi)


def geo_summary(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """Geometric mean of positive errors with its t interval on the log scale (it cannot go below zero).

    `gmean` 0 and no interval when an error is 0 (its log is -inf); interval NaN with fewer than 2 values.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return {"gmean": math.nan, "lo": math.nan, "hi": math.nan}
    if (x == 0).any():
        return {"gmean": 0.0, "lo": math.nan, "hi": math.nan}
    logs = np.log(x)
    lo, hi = mean_ci(logs, confidence)
    return {"gmean": float(np.exp(logs.mean())), "lo": math.exp(lo) if not math.isnan(lo) else math.nan,
            "hi": math.exp(hi) if not math.isnan(hi) else math.nan}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count as tests).

    Written here because neither scipy (`false_discovery_control` is Benjamini-Hochberg) nor another core
    dependency offers it; tests check it against statsmodels' `multipletests(method='holm')`.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def log_ratio_test(d: Sequence[float], test: bool = True) -> dict[str, object]:
    """The change exp(mean d) - 1 (%) of finite log ratios `d` with its 95% t interval and, with `test`, the test
    of mean d = 0: one-sample t-test; the exact sign test when every d is the same (no spread: t is undefined);
    p = 1 when every d is 0 (identical errors). `test` names the test used ('' when none)."""
    d = np.asarray(d, dtype=float)
    res: dict[str, object] = {"change_pct": math.nan, "ci_lo_pct": math.nan, "ci_hi_pct": math.nan, "test": "",
                              "statistic": math.nan, "p": math.nan, "wilcoxon_p": math.nan,
                              "n_ties": int((d == 0).sum())}
    if len(d) == 0:
        return res
    lo, hi = mean_ci(d)
    res.update(change_pct=100 * math.expm1(d.mean()), ci_lo_pct=100 * math.expm1(lo) if not math.isnan(lo) else lo,
               ci_hi_pct=100 * math.expm1(hi) if not math.isnan(hi) else hi)
    if not test or len(d) < 2:
        return res
    if not np.any(d):
        return {**res, "test": "identical", "statistic": 0.0, "p": 1.0, "wilcoxon_p": 1.0}
    if np.ptp(d) <= 1e-12 * np.abs(d).max():
        sign = sst.binomtest(int((d > 0).sum()), len(d))
        return {**res, "test": "sign", "statistic": float((d > 0).sum()), "p": float(sign.pvalue),
                "wilcoxon_p": float(sst.wilcoxon(d).pvalue)}
    t = sst.ttest_1samp(d, 0.0)
    wil = sst.wilcoxon(d).pvalue if np.count_nonzero(d) else 1.0
    return {**res, "test": "t", "statistic": float(t.statistic), "p": float(t.pvalue), "wilcoxon_p": float(wil)}


# matched pairs -------------------------------------------------------------------------------------------------
PAIR_KEY = ["group", "arch", "teacher_arch", "method", "label", "metric"]
PAIR_COLUMNS = PAIR_KEY + ["scene", "seed", "error", "base_error", "log_ratio", "failed", "base_failed", "usable"]
SCENE_COLUMNS = PAIR_KEY + ["scene", "n_pairs", "n_failed", "n_base_failed", "n_zero", "n_used", "log_ratio",
                            "sd"]


def log_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Every matched (scene, seed) pair of a KD student row and the no-KD student of its architecture, per metric.

    One row per (group, arch, teacher_arch, method, label, metric, scene, seed): both errors and the log error
    ratio log(error / base_error). Failed or non-finite runs are pairs too (`failed`: the method's run,
    `base_failed`: the baseline's; log_ratio NaN), never dropped. A zero error on one side gives a log ratio of
    -inf or +inf (a ratio cannot say by how much), zero on both sides gives 0 (a tie). `usable`: the log ratio is
    finite, so it can enter a mean; estimates average the usable pairs and count the others.
    In a crossed design (--teacher-seeds x --student-seeds) the pairs are by scene and student seed: the runs of
    one student seed with its several teachers count as one (kdbench.reports.crossed).
    """
    jobs = result_jobs(df)
    students = jobs[jobs["role"] == "student"].copy()
    if students.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    students["label"] = row_labels(students)
    base = students[students["method"] == "baseline"]
    kd = students[students["method"] != "baseline"]
    out = []
    for metric, (col, _) in METRICS.items():
        runs = per_student_seed(kd, col, ["group", "arch", "teacher_arch", "method", "label"])  # crossed designs
        pairs = runs.merge(base[["group", "arch", "scene", "seed", col, "failed"]],
                           on=["group", "arch", "scene", "seed"], suffixes=("", "_base"))
        e, b = pairs[col].to_numpy(dtype=float), pairs[f"{col}_base"].to_numpy(dtype=float)
        failed, base_failed = pairs["failed"].to_numpy(bool), pairs["failed_base"].to_numpy(bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            lr = np.log(e) - np.log(b)
        lr = np.where((e == 0) & (b == 0), 0.0, lr)
        lr = np.where(failed | base_failed, np.nan, lr)
        out.append(pd.DataFrame({**{k: pairs[k].to_numpy() for k in PAIR_KEY if k != "metric"}, "metric": metric,
                                 "scene": pairs["scene"].to_numpy(), "seed": pairs["seed"].to_numpy(),
                                 "error": e, "base_error": b, "log_ratio": lr, "failed": failed,
                                 "base_failed": base_failed, "usable": np.isfinite(lr)}))
    return pd.concat(out, ignore_index=True)[PAIR_COLUMNS]


def scene_effects(pairs: pd.DataFrame) -> pd.DataFrame:
    """The per-scene estimator: per row, metric and scene, the mean log ratio over that scene's usable seeds.

    exp(log_ratio) - 1 is the scene's geometric-mean change. Counted beside it: the pairs (n_pairs), the method's
    failed runs (n_failed), the baseline's (n_base_failed), pairs with a zero error (n_zero) and the usable pairs
    the mean is over (n_used; log_ratio NaN when none). `sd`: standard deviation of the usable log ratios.
    """
    if pairs.empty:
        return pd.DataFrame(columns=SCENE_COLUMNS)
    zero = (pairs["error"] == 0) | (pairs["base_error"] == 0)
    frame = pairs.assign(_zero=zero & ~pairs["failed"] & ~pairs["base_failed"],
                         _lr=pairs["log_ratio"].where(pairs["usable"]))
    out = frame.groupby(PAIR_KEY + ["scene"], sort=False, dropna=False).agg(
        n_pairs=("seed", "size"), n_failed=("failed", "sum"), n_base_failed=("base_failed", "sum"),
        n_zero=("_zero", "sum"), n_used=("usable", "sum"), log_ratio=("_lr", "mean"),
        sd=("_lr", "std")).reset_index()
    for c in ("n_pairs", "n_failed", "n_base_failed", "n_zero", "n_used"):
        out[c] = out[c].astype(int)
    return out[SCENE_COLUMNS]


# against the baseline -----------------------------------------------------------------------------------------
def _unit_row(sub: pd.DataFrame, d: np.ndarray, enough: bool, reason: str) -> dict[str, object]:
    """Counts of one comparison's pairs and the test of its log ratios `d` (with why it was not tested)."""
    failed, base_failed = sub["failed"].to_numpy(bool), sub["base_failed"].to_numpy(bool)
    zero = ((sub["error"].to_numpy() == 0) | (sub["base_error"].to_numpy() == 0)) & ~failed & ~base_failed
    row: dict[str, object] = {"n_pairs": len(sub), "n_seeds": len(set(sub["seed"])), "n_scenes": len(set(sub["scene"])),
                              "n_used": int(sub["usable"].to_numpy().sum()), "n_failed": int(failed.sum()),
                              "n_base_failed": int(base_failed.sum()), "n_zero": int(zero.sum()),
                              "failure_rate": float(failed.mean()) if len(sub) else math.nan}
    row.update(log_ratio_test(d, test=enough))
    row["reason"] = "" if enough else reason
    return row


def compare_to_baseline(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, scene or 'average', level, KD student row, metric 't'|'r'): the change against the
    baseline student of the same architecture, its test, Holm-adjusted p and the claim it allows (`direction`:
    'better', 'worse' or '' when there is none).

    Per scene (level 'seeds'): over that scene's seeds, exploratory. With 2 or more scenes, 'average' rows:
    level 'scenes' (the headline: per-scene mean log ratios tested over scenes, MIN_SCENES or more) and level
    'pooled' (every (scene, seed) pair, a claim about these scenes only). `reason` says why a row was not tested.
    """
    pairs = log_ratios(df)
    if pairs.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    effects = scene_effects(pairs)
    rows = []
    key = ["group", "arch", "teacher_arch", "method", "label", "metric"]
    for _, part in pairs.groupby(["group", "arch"], sort=False):
        scenes = list(dict.fromkeys(part["scene"]))
        for k, sub in part.groupby(key, sort=False):
            ident = dict(zip(key, k))
            for scene in scenes:
                one = sub[sub["scene"] == scene]
                if one.empty:
                    continue
                d = one.loc[one["usable"], "log_ratio"].to_numpy()
                enough = len(d) >= MIN_PAIRS and one.loc[one["usable"], "seed"].nunique() >= MIN_SEEDS
                why = "one seed" if one["seed"].nunique() < 2 else "too few pairs"
                rows.append({**ident, "scene": scene, "level": "seeds", **_unit_row(one, d, enough, why)})
            if len(scenes) < 2:
                continue
            eff = effects[(effects[key] == pd.Series(ident)).all(axis=1)]
            x = eff["log_ratio"].dropna().to_numpy()
            n_group_scenes = len(scenes)
            why = "too few scenes" if n_group_scenes < MIN_SCENES else "not on enough scenes"
            row = _unit_row(sub, x, len(x) >= MIN_SCENES, why)
            row["n_scenes"] = len(x)
            rows.append({**ident, "scene": AVERAGE, "level": "scenes", **row})
            d = sub.loc[sub["usable"], "log_ratio"].to_numpy()
            enough = len(d) >= MIN_PAIRS and sub.loc[sub["usable"], "seed"].nunique() >= MIN_SEEDS
            why = "one seed" if sub["seed"].nunique() < 2 else "too few pairs"
            rows.append({**ident, "scene": AVERAGE, "level": "pooled", **_unit_row(sub, d, enough, why)})
    out = pd.DataFrame(rows)
    out["tested"] = out["p"].notna()
    family = ["group", "arch", "scene", "level"]
    out["n_tests"] = out.groupby(family)["tested"].transform("sum").astype(int)
    out["p_holm"] = out.groupby(family)["p"].transform(lambda p: pd.Series(holm(p.to_numpy()), index=p.index))
    out["significant"] = out["p_holm"] < ALPHA
    better = out["significant"] & (out["change_pct"] < 0) & (out["n_failed"] == 0)
    worse = out["significant"] & (out["change_pct"] > 0)
    out["direction"] = np.where(better, "better", np.where(worse, "worse", ""))
    return out[COMPARISON_COLUMNS].reset_index(drop=True)


def headline(comparison: pd.DataFrame) -> pd.DataFrame:
    """The rows behind the table's marks: per scene its exploratory test, for 'average' the scene-level one."""
    if comparison.empty:
        return comparison
    return comparison[comparison["level"].isin(["seeds", "scenes"])]


# ranks across scenes ------------------------------------------------------------------------------------------
def block_matrix(df: pd.DataFrame, group: str, arch: str, metric: str = "t",
                 jobs: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Scenes (blocks) x student rows of one group and architecture: each row's geometric mean error over its seeds
    on the scene, +inf when one of them failed (ranked last); and the labels of rows left out because they have no
    result on some scene (rows are dropped, never blocks). `jobs`: result_jobs(df) when the caller has it."""
    col = METRICS[metric][0]
    jobs = result_jobs(df) if jobs is None else jobs
    students = jobs[jobs["role"] == "student"].copy()
    students["label"] = row_labels(students) if len(students) else []
    part = students[(students["group"] == group) & (students["arch"] == arch)].copy()
    with np.errstate(divide="ignore"):
        part["_log"] = np.where(part["failed"], np.inf, np.log(part[col].astype(float).where(~part["failed"], 1.0)))
    wide = np.exp(part.pivot_table(index="scene", columns="label", values="_log", aggfunc="mean"))
    order = list(dict.fromkeys(part["label"]))
    left_out = [c for c in order if c in wide.columns and wide[c].isna().any()]
    wide = wide[[c for c in order if c in wide.columns and c not in left_out]]
    return wide.reindex([s for s in dict.fromkeys(part["scene"]) if s in wide.index]), left_out


def _rank_sums_stat(ranks: np.ndarray) -> np.ndarray:
    """Friedman's statistic up to constants: the sum of squared rank sums (last axis rows, second last blocks)."""
    return (ranks.sum(axis=-2) ** 2).sum(axis=-1)


def friedman_test(wide: pd.DataFrame, n_permutations: int = N_PERMUTATIONS, seed: int = 0) -> dict[str, float]:
    """Friedman's χ² (tie-corrected), the Iman-Davenport F with its p, and the permutation p of blocks x rows
    `wide` (ranks permuted within each block; fixed seed). All tied in every block: statistic NaN, p 1."""
    x = wide.to_numpy(dtype=float)
    n, k = x.shape
    ranks = np.vstack([sst.rankdata(row) for row in x])
    if all(len(set(row)) == 1 for row in x):
        return {"statistic": math.nan, "f_statistic": math.nan, "f_p": math.nan, "p": 1.0, "all_tied": True}
    res = sst.friedmanchisquare(*[ranks[:, j] for j in range(k)])
    chi2 = float(res.statistic)
    denom = n * (k - 1) - chi2
    f = (n - 1) * chi2 / denom if denom > 0 else math.inf
    f_p = float(sst.f.sf(f, k - 1, (k - 1) * (n - 1))) if math.isfinite(f) else 0.0
    rng = np.random.default_rng(seed)
    perm = np.argsort(rng.random((n_permutations, n, k)), axis=-1)
    permuted = np.take_along_axis(np.broadcast_to(ranks, perm.shape), perm, axis=-1)
    observed = _rank_sums_stat(ranks)
    p = (1 + int((_rank_sums_stat(permuted) >= observed - 1e-9).sum())) / (1 + n_permutations)
    return {"statistic": chi2, "f_statistic": f, "f_p": f_p, "p": float(p), "all_tied": False}


def friedman(df: pd.DataFrame) -> pd.DataFrame:
    """Per group, student architecture and metric: mean rank of every complete row over the scenes (blocks) and
    the Friedman test (`friedman_test`; statistic and p NaN when fewer than 3 rows or 2 scenes)."""
    jobs = result_jobs(df)
    students = _students(jobs)
    rows = []
    for (group, arch), _ in students.groupby(["group", "arch"], sort=False):
        for metric in METRICS:
            wide, left_out = block_matrix(df, group, arch, metric, jobs)
            ranks = wide.rank(axis=1, method="average").mean() if len(wide) else pd.Series(dtype=float)
            res = {"statistic": math.nan, "f_statistic": math.nan, "f_p": math.nan, "p": math.nan, "all_tied": False}
            if wide.shape[1] >= 3 and len(wide) >= 2:
                res = friedman_test(wide)
            rows.append({"group": group, "arch": arch, "metric": metric, "n_blocks": len(wide),
                         "n_rows": wide.shape[1], **res,
                         "mean_ranks": {k: float(v) for k, v in ranks.sort_values().items()},
                         "left_out": left_out})
    return pd.DataFrame(rows, columns=FRIEDMAN_COLUMNS)


def pairwise_wilcoxon(wide: pd.DataFrame) -> pd.DataFrame:
    """Every pair of rows of blocks x rows `wide`: Wilcoxon's signed-rank test over the blocks on log errors
    (a failure, +inf, is the largest difference: ranked last), Holm over all pairs."""
    with np.errstate(divide="ignore"):  # a zero error is -inf: ranked first, as it should be
        logs = np.log(wide.astype(float))
    big = 2 * np.nanmax(np.abs(logs.replace([np.inf, -np.inf], np.nan).to_numpy())) + 1 if logs.size else 1.0
    rows = []
    for a, b in itertools.combinations(wide.columns, 2):
        x, y = logs[a].to_numpy(), logs[b].to_numpy()
        with np.errstate(invalid="ignore"):
            d = np.where(np.isinf(x) & np.isinf(y) & (np.sign(x) == np.sign(y)), 0.0, x - y)
        d = np.nan_to_num(d, posinf=big, neginf=-big)
        if not np.any(d):
            stat, p = 0.0, 1.0
        else:
            res = sst.wilcoxon(d)
            stat, p = float(res.statistic), float(res.pvalue)
        rows.append({"a": a, "b": b, "n_blocks": len(d), "statistic": stat, "p": p})
    out = pd.DataFrame(rows, columns=["a", "b", "n_blocks", "statistic", "p"])
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    out["significant"] = out["p_holm"] < ALPHA
    return out


def pairwise(df: pd.DataFrame, ranks: pd.DataFrame | None = None) -> pd.DataFrame:
    """The post-hoc tests behind the critical-difference diagrams: per group, architecture and metric with a
    Friedman test, `pairwise_wilcoxon` over the same blocks and rows."""
    ranks = friedman(df) if ranks is None else ranks
    jobs = result_jobs(df)
    out = []
    for r in ranks[ranks["p"].notna()].itertuples():
        wide, _ = block_matrix(df, r.group, r.arch, r.metric, jobs)
        out.append(pairwise_wilcoxon(wide).assign(group=r.group, arch=r.arch, metric=r.metric))
    if not out:
        return pd.DataFrame(columns=PAIRWISE_COLUMNS)
    return pd.concat(out, ignore_index=True)[PAIRWISE_COLUMNS]


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p Wilcoxon's exact signed-rank test can give over n blocks: 2 / 2^n."""
    return 2.0 / 2**n


def _students(jobs: pd.DataFrame) -> pd.DataFrame:
    students = jobs[jobs["role"] == "student"].copy()
    students["label"] = row_labels(students) if len(students) else []
    return students


# words --------------------------------------------------------------------------------------------------------
def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _pct(value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return "0%" if round(value) == 0 else f"{value:+.0f}%"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _s(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _verdict(p: float) -> str:
    return f"{_fmt_p(p)}, {'significant' if p < ALPHA else 'not significant'} at {ALPHA}"


def _change(r) -> str:
    ci = f", 95% CI {_pct(r.ci_lo_pct)} to {_pct(r.ci_hi_pct)}" if not math.isnan(r.ci_lo_pct) else ""
    return f"{_pct(r.change_pct)}{ci}"


def _family(rows: pd.DataFrame) -> str:
    n_tests, n_rows = int(rows["tested"].sum()), rows.loc[rows["tested"], "label"].nunique()
    return (f"Holm-corrected over the {_s(n_tests, 'tested comparison')} ({_s(n_rows, 'method')} x translation "
            f"and rotation) at {ALPHA}")


def _scene_level(title: str, arch: str, rows: pd.DataFrame, n_group_scenes: int) -> list[str]:
    if n_group_scenes < MIN_SCENES:
        few = "one scene is" if n_group_scenes == 1 else f"{n_group_scenes} scenes are"
        return [f"{title}: {few} too few for a scene-level claim (one about scenes like these, not only these): "
                f"that needs {MIN_SCENES} or more scenes, the seeds of each averaged first."]
    tested = rows[rows["tested"]]
    if tested.empty:
        return [f"{title}: no scene-level test against the {arch} student alone (no method has a result on "
                f"{MIN_SCENES} or more scenes)."]
    basis = (f"scene-level: per scene the mean log error ratio over seeds, then a t-test over "
             f"{_s(int(tested['n_scenes'].max()), 'scene')}, {_family(rows)}")
    claims = [f"{r.label} is significantly {r.direction} in {METRICS[r.metric][1]} ({_change(r)}, Holm-adjusted "
              f"{_fmt_p(r.p_holm)}, {_s(r.n_scenes, 'scene')})" for r in tested[tested["direction"] != ""].itertuples()]
    if not claims:
        return [f"{title}: across scenes, no method is significantly better or worse than the {arch} student alone "
                f"({basis})."]
    return [f"{title}: across scenes, {_join(claims)}; no other difference is significant ({basis})."]


def _on_these(title: str, arch: str, rows: pd.DataFrame, where: str) -> list[str]:
    tested = rows[rows["tested"]]
    n_seeds, pairs = int(rows["n_seeds"].max()), int(rows["n_pairs"].max())
    if tested.empty:
        what = "one seed" if n_seeds <= 1 else f"{_s(pairs, '(scene, seed) pair')}"
        return [f"{title}, on {where}: with {what} no claim can be made about which method is better or worse than "
                f"the {arch} student alone on them; a paired test needs {MIN_SEEDS} or more seeds and {MIN_PAIRS} or "
                f"more pairs (run with `--seeds 3` or more)."]
    basis = (f"{TEST_NAME} over up to {_s(pairs, '(scene, seed) pair')} ({_s(n_seeds, 'seed')}), {_family(rows)}; "
             f"a result about {where} only")
    claims = []
    for r in tested[tested["direction"] != ""].itertuples():
        word = "lower" if r.direction == "better" else "higher"
        claims.append(f"{r.label}'s {METRICS[r.metric][1]} error is {word} ({_change(r)}, Holm-adjusted "
                      f"{_fmt_p(r.p_holm)}, {_s(r.n_used, 'pair')})")
    if not claims:
        return [f"{title}, on {where}: no method's error differs significantly from the {arch} student alone's "
                f"({basis})."]
    return [f"{title}, on {where}: {_join(claims)}; no other difference is significant ({basis})."]


def _row_notes(rows: pd.DataFrame, pairs: int) -> list[str]:
    """Honest words for what the tests alone would hide: failures, zero errors, no spread, ties, fewer pairs."""
    out = []
    per_row = rows.groupby("label", sort=False)
    for label, r in per_row:
        x = r.iloc[0]
        if x.n_failed:
            held = " and is not called better" if ((r["change_pct"] < 0) & r["significant"]).any() else ""
            over = (f"its change is over the runs that finished{held}" if x.n_used else
                    "no pair is left to estimate a change")
            out.append(f"{label} failed or diverged on {x.n_failed} of {_s(x.n_pairs, 'run')} paired with the "
                       f"baseline (failure rate {x.n_failed / x.n_pairs:.0%}): {over}.")
        if x.n_base_failed:
            out.append(f"The baseline failed on {x.n_base_failed} of {label}'s {_s(x.n_pairs, 'pair')}: left out "
                       f"of its change.")
        if x.n_zero:
            out.append(f"{_s(x.n_zero, 'pair')} of {label} {'has' if x.n_zero == 1 else 'have'} a zero error, which "
                       f"a ratio cannot weigh: left out of its change.")
    for r in rows.itertuples():
        what = METRICS[r.metric][1]
        if r.test == "sign":
            out.append(f"{r.label} changes {what} by the same {_pct(r.change_pct)} on every one of its "
                       f"{_s(r.n_used, 'pair' if r.level != 'scenes' else 'scene')} (no spread, so no t-test): the "
                       f"exact sign test gives {_fmt_p(r.p)} (Holm-adjusted {_fmt_p(r.p_holm)}).")
        elif r.test == "identical":
            out.append(f"{r.label}'s {what} errors equal the baseline's on all {_s(r.n_used, 'pair')} (a tie).")
    few = sorted(set(rows.loc[rows["n_pairs"] < pairs, "label"]))
    if few:
        out.append(f"Fewer pairs for {_join(few)} (not run on every seed the baseline has).")
    return out


def summary_sentences(comparison: pd.DataFrame, ranks: pd.DataFrame | None = None,
                      posthoc: pd.DataFrame | None = None) -> dict[str, list[str]]:
    """Per group: the scene-level claim (or that the scenes are too few), the pooled result on these scenes, what
    failed, had zero errors or no spread, and the Friedman result with its post-hoc tests; every result with its
    significance clause."""
    out: dict[str, list[str]] = {}
    for group, part in comparison.groupby("group", sort=False):
        title = GROUP_TITLES.get(group, group)
        sentences = []
        for arch, rows in part.groupby("arch", sort=False):
            scenes = [s for s in dict.fromkeys(rows["scene"]) if s != AVERAGE]
            if len(scenes) > 1:
                sentences += _scene_level(title, arch, rows[rows["level"] == "scenes"], len(scenes))
                pooled = rows[rows["level"] == "pooled"]
                sentences += _on_these(title, arch, pooled, f"these {len(scenes)} scenes")
            else:
                pooled = rows[rows["level"] == "seeds"]
                sentences += _scene_level(title, arch, pooled.iloc[:0], 1)
                sentences += _on_these(title, arch, pooled, f"{scenes[0]}")
            sentences += _row_notes(pooled, int(pooled["n_pairs"].max()))
            if len(scenes) > 1:
                sentences.append("Per-scene marks († in a scene's column) are exploratory: tests over that scene's "
                                 "seeds, Holm-corrected within the scene.")
        if ranks is not None:
            sentences += _friedman_sentences(ranks[ranks["group"] == group], posthoc)
        out[group] = list(dict.fromkeys(sentences))  # several student archs: a sentence of the group once
    return out


def _friedman_sentences(ranks: pd.DataFrame, posthoc: pd.DataFrame | None) -> list[str]:
    out = []
    for arch, part in ranks.groupby("arch", sort=False):
        tested = part[part["p"].notna()]
        if tested.empty:
            continue
        r = tested.iloc[0]
        results, best = [], []
        for x in tested.itertuples():
            what = METRICS[x.metric][1]
            if x.all_tied:
                results.append(f"{what}: every row ties on every scene (no difference in ranks)")
                continue
            results.append(f"{what} χ² = {x.statistic:.2f}, Iman-Davenport F = {x.f_statistic:.2f}, permutation "
                           f"{_verdict(x.p)}")
            best.append(f"{what} {min(x.mean_ranks, key=x.mean_ranks.get)}")
        text = (f"Friedman test over {_s(int(r.n_blocks), 'scene')} (blocks; each row's seeds averaged by geometric "
                f"mean, a failed run ranked last) and {r.n_rows} {arch} students: {'; '.join(results)}.")
        if best:
            text += " Best mean rank: " + ", ".join(best) + "."
        left = sorted({x for lo in tested["left_out"] for x in lo})
        if left:
            text += f" Left out (no result on every scene): {_join(left)}."
        if posthoc is not None:
            text += _posthoc_sentence(posthoc[(posthoc["group"] == r.group) & (posthoc["arch"] == arch)],
                                      int(r.n_blocks))
        out.append(text)
    return out


def _posthoc_sentence(posthoc: pd.DataFrame, n_blocks: int) -> str:
    if posthoc.empty:
        return ""
    base = f" Post hoc, pairwise Wilcoxon signed-rank tests over the {n_blocks} scenes, Holm-corrected"
    if min_wilcoxon_p(n_blocks) >= ALPHA:
        return (f"{base}: with {n_blocks} scenes no pair can differ (the smallest p such a test can give is "
                f"{min_wilcoxon_p(n_blocks):.3f}).")
    sig = posthoc[posthoc["significant"]]
    if sig.empty:
        return f"{base}: no pair of rows differs significantly."
    pairs = [f"{x.a} and {x.b} in {METRICS[x.metric][1]} (adjusted {_fmt_p(x.p_holm)})" for x in sig.itertuples()]
    return f"{base}: {_join(pairs)} differ significantly."


@dataclass
class Significance:
    """Everything the pages say about significance: the comparisons, ranks, post-hoc tests, sentences per group."""

    comparison: pd.DataFrame
    ranks: pd.DataFrame
    sentences: dict[str, list[str]]
    posthoc: pd.DataFrame | None = None


def analyse(df: pd.DataFrame) -> Significance:
    """compare_to_baseline, friedman, pairwise and summary_sentences of one results frame."""
    comparison, ranks = compare_to_baseline(df), friedman(df)
    posthoc = pairwise(df, ranks)
    return Significance(comparison, ranks, summary_sentences(comparison, ranks, posthoc), posthoc)
