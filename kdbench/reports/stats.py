"""Statistics of the leaderboard: confidence intervals, paired tests against the student alone, Friedman ranks.

Reads only the results frame (`leaderboard.load_results`); the tests are scipy.stats'. Choices, and why:

- Cell interval: Student-t 95% interval of the mean over seeds (n - 1 degrees of freedom); none when n = 1.
- Against the student alone: every student row is compared with the no-KD student (`baseline`) of the same
  architecture on the (scene, seed) pairs both have, and only on those: the same seed gives the same data
  order and, for KD methods, the same teacher. The effect of one pair is the log error ratio
  log(e_method / e_baseline). Scenes differ in scale (SynthRoom's errors are about 0.5 m, SynthStreet's 4 m),
  so differences in metres pooled over scenes would be decided by the largest scene; a ratio counts a 10%
  gain the same on every scene, and the log makes the positive, right-skewed errors symmetric. The change
  reported with the test is the geometric mean ratio exp(mean log ratio) - 1 with its t interval.
- The test is the two-sided paired t-test (`scipy.stats.ttest_rel` on the logs), not Wilcoxon's signed-rank
  test: Wilcoxon's exact p-value over n pairs cannot go below 2 / 2^n (0.031 for 6 pairs, 0.0625 for 5), so
  with the few seeds a benchmark affords no difference could survive the correction below, whatever the
  data. The t-test assumes roughly normal log ratios; Wilcoxon's p is reported beside it as a check.
- Holm's step-down correction over the rows compared with the same baseline in one table column (per scene
  and metric; per group for the test that pools the group's scenes). A mark means adjusted p < 0.05.
- No test with fewer than MIN_SEEDS distinct seeds or MIN_PAIRS pairs: with one seed a difference between
  methods cannot be told apart from a difference between seeds, so nothing is claimed.
- Friedman: per group and student architecture, blocks are the (scene, seed) pairs on which every student
  row ran; rows are ranked within each block (1 = lowest error, ties share the mean rank), and
  `scipy.stats.friedmanchisquare` tests that all rows rank alike (needs 3 rows and 2 blocks). The post-hoc
  test and the critical-difference diagram (Nemenyi, scikit-posthocs) are drawn by `plots.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sst

from kdbench.reports.rows import AVERAGE, GROUP_TITLES, result_jobs, row_labels, shown_jobs

ALPHA = 0.05
CONFIDENCE = 0.95
MIN_SEEDS = 2
MIN_PAIRS = 3
METRICS = {"t": ("median_t", "translation"), "r": ("median_r", "rotation")}
MARK = "†"
TEST_NAME = "paired t-test on log error ratios"

COMPARISON_COLUMNS = ["group", "scene", "arch", "teacher_arch", "method", "label", "metric", "n_pairs", "n_seeds",
                      "n_scenes", "change_pct", "ci_lo_pct", "ci_hi_pct", "statistic", "p", "wilcoxon_p",
                      "n_tests", "p_holm", "significant", "direction"]
FRIEDMAN_COLUMNS = ["group", "arch", "metric", "n_blocks", "n_rows", "statistic", "p", "mean_ranks", "left_out"]


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


def paired_test(method: Sequence[float], base: Sequence[float], test: bool = True) -> dict[str, float]:
    """Paired t-test of log(method) against log(base), the geometric mean change (%) with its 95% CI
    (`test=False`: the change and interval only, statistic and p-values NaN)."""
    a, b = np.log(np.asarray(method, float)), np.log(np.asarray(base, float))
    d = a - b
    lo, hi = mean_ci(d)
    res = {"change_pct": 100 * math.expm1(d.mean()), "ci_lo_pct": 100 * math.expm1(lo),
           "ci_hi_pct": 100 * math.expm1(hi), "statistic": math.nan, "p": math.nan, "wilcoxon_p": math.nan}
    if not test or len(d) < 2:
        return res
    if not np.any(d):  # identical errors on every pair: no difference at all
        return {**res, "statistic": 0.0, "p": 1.0, "wilcoxon_p": 1.0}
    if np.ptp(d) <= 1e-12 * np.abs(d).max():  # the same gap on every pair: no spread, t is undefined
        return res
    t = sst.ttest_rel(a, b)
    res.update(statistic=float(t.statistic), p=float(t.pvalue), wilcoxon_p=float(sst.wilcoxon(a, b).pvalue))
    return res


def _students(jobs: pd.DataFrame) -> pd.DataFrame:
    students = jobs[jobs["role"] == "student"].copy()
    students["label"] = row_labels(students) if len(students) else []
    return students


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
        pairs = kd.merge(base[["group", "arch", "scene", "seed", col, "failed"]], on=["group", "arch", "scene", "seed"],
                         suffixes=("", "_base"))
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
def compare_to_baseline(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, scene or 'average', student row, metric 't'|'r'): the paired test against the
    baseline student of the same architecture, Holm-adjusted p and whether it is significant.

    'average' rows pool every (scene, seed) pair of the group and exist when the group has 2 or more scenes.
    `tested` is False (p NaN) when the pairs are too few (MIN_SEEDS distinct seeds, MIN_PAIRS pairs).
    """
    students = _students(shown_jobs(df))
    rows = []
    for (group, arch), part in students.groupby(["group", "arch"], sort=False):
        base = part[part["method"] == "baseline"]
        if base.empty:
            continue
        scenes = list(dict.fromkeys(part["scene"]))
        units = [(s, [s]) for s in scenes] + ([(AVERAGE, scenes)] if len(scenes) > 1 else [])
        for (teacher_arch, method, label), rowjobs in part.groupby(["teacher_arch", "method", "label"], sort=False):
            if method == "baseline":
                continue
            for unit, unit_scenes in units:
                pairs = rowjobs[rowjobs["scene"].isin(unit_scenes)].merge(
                    base[["scene", "seed", "median_t", "median_r"]], on=["scene", "seed"], suffixes=("", "_base"))
                for metric, (col, _) in METRICS.items():
                    n_seeds = pairs["seed"].nunique()
                    row = {"group": group, "scene": unit, "arch": arch, "teacher_arch": teacher_arch,
                           "method": method, "label": label, "metric": metric, "n_pairs": len(pairs),
                           "n_seeds": n_seeds, "n_scenes": pairs["scene"].nunique()}
                    if len(pairs) >= 1:
                        enough = len(pairs) >= MIN_PAIRS and n_seeds >= MIN_SEEDS
                        row.update(paired_test(pairs[col], pairs[f"{col}_base"], test=enough))
                    rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c not in ("n_tests", "p_holm", "significant",
                                                                                 "direction")])
    if out.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS + ["tested"])
    out["tested"] = out["p"].notna()
    family = ["group", "arch", "scene", "metric"]
    out["n_tests"] = out.groupby(family)["tested"].transform("sum").astype(int)
    out["p_holm"] = out.groupby(family)["p"].transform(lambda p: pd.Series(holm(p.to_numpy()), index=p.index))
    out["significant"] = out["p_holm"] < ALPHA
    out["direction"] = np.where(~out["significant"], "", np.where(out["change_pct"] < 0, "better", "worse"))
    return out[COMPARISON_COLUMNS + ["tested"]]


# ranks across scenes ------------------------------------------------------------------------------------------
def block_matrix(df: pd.DataFrame, group: str, arch: str, metric: str = "t") -> tuple[pd.DataFrame, list[str]]:
    """(scene, seed) blocks x student rows of one group and architecture holding `metric`'s error, only blocks
    where every row ran; and the labels of rows left out because they share no block with the others.

    A row that ran on fewer (scene, seed) pairs than the rest would empty the matrix: rows are dropped, fewest
    pairs first, until 3 or more rows share 2 or more blocks (the dropped ones are named on the page).
    """
    col = METRICS[metric][0]
    students = _students(shown_jobs(df))
    part = students[(students["group"] == group) & (students["arch"] == arch)]
    wide = part.pivot_table(index=["scene", "seed"], columns="label", values=col, aggfunc="last")
    left_out: list[str] = []
    while wide.shape[1] >= 3 and len(wide.dropna()) < 2:
        worst = wide.notna().sum().sort_values(kind="stable").index[0]
        left_out.append(worst)
        wide = wide.drop(columns=worst)
    order = list(dict.fromkeys(part["label"]))
    return wide.dropna()[[c for c in order if c in wide.columns]], left_out


def friedman(df: pd.DataFrame) -> pd.DataFrame:
    """Per group, student architecture and metric: mean rank of every row over the complete (scene, seed)
    blocks and the Friedman test (statistic and p NaN when fewer than 3 rows or 2 blocks)."""
    students = _students(shown_jobs(df))
    rows = []
    for (group, arch), _ in students.groupby(["group", "arch"], sort=False):
        for metric in METRICS:
            wide, left_out = block_matrix(df, group, arch, metric)
            ranks = wide.rank(axis=1, method="average").mean() if len(wide) else pd.Series(dtype=float)
            stat = p = math.nan
            if wide.shape[1] >= 3 and len(wide) >= 2:
                res = sst.friedmanchisquare(*[wide[c].to_numpy() for c in wide.columns])
                stat, p = float(res.statistic), float(res.pvalue)
            rows.append({"group": group, "arch": arch, "metric": metric, "n_blocks": len(wide),
                         "n_rows": wide.shape[1], "statistic": stat, "p": p,
                         "mean_ranks": {k: float(v) for k, v in ranks.sort_values().items()},
                         "left_out": left_out})
    return pd.DataFrame(rows, columns=FRIEDMAN_COLUMNS)


# words --------------------------------------------------------------------------------------------------------
def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _pct(value: float) -> str:
    return "0%" if round(value) == 0 else f"{value:+.0f}%"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def summary_sentences(comparison: pd.DataFrame, ranks: pd.DataFrame | None = None) -> dict[str, list[str]]:
    """Per group, sentences that say which rows are significantly better or worse than the student alone
    (or that none is), on how many seeds, scenes and pairs that rests, and the Friedman result."""
    out: dict[str, list[str]] = {}
    for group, part in comparison.groupby("group", sort=False):
        title = GROUP_TITLES.get(group, group)
        pooled = part[part["scene"] == AVERAGE] if (part["scene"] == AVERAGE).any() else part
        sentences = []
        for arch, rows in pooled.groupby("arch", sort=False):
            n_scenes = int(rows["n_scenes"].max())
            n_seeds = int(rows["n_seeds"].max())
            pairs = int(rows["n_pairs"].max())
            where = f"{n_scenes} scene{'s' if n_scenes != 1 else ''}"
            if not rows["tested"].any():
                seeds_word = "one seed" if n_seeds <= 1 else f"{pairs} (scene, seed) pairs"
                sentences.append(f"{title}: with {seeds_word} ({where}) no claim can be made about which method is "
                                 f"better or worse than the {arch} student alone; a test needs {MIN_SEEDS} or more "
                                 f"seeds and {MIN_PAIRS} or more pairs (run with `--seeds 3` or more).")
                continue
            n_rows = rows["label"].nunique()
            basis = (f"{TEST_NAME} against the {arch} student alone over up to {pairs} (scene, seed) pairs "
                     f"({where}, {n_seeds} seed{'s' if n_seeds != 1 else ''}), Holm-corrected over {n_rows} "
                     f"method{'s' if n_rows != 1 else ''} at {ALPHA}")
            sig = rows[rows["significant"]]
            if sig.empty:
                sentences.append(f"{title}: no method is significantly better or worse than the {arch} student "
                                 f"alone ({basis}).")
            else:
                claims = []
                for r in sig.itertuples():
                    what = METRICS[r.metric][1]
                    claims.append(f"{r.label} is significantly {r.direction} in {what} ({_pct(r.change_pct)}, "
                                  f"95% CI {_pct(r.ci_lo_pct)} to {_pct(r.ci_hi_pct)}, Holm-adjusted "
                                  f"{_fmt_p(r.p_holm)}, {r.n_pairs} pairs)")
                sentences.append(f"{title}: {_join(claims)}; no other difference is significant ({basis}).")
            few = sorted(set(rows.loc[rows["tested"] & (rows["n_pairs"] < pairs), "label"]))
            if few:
                sentences.append(f"Fewer pairs for {_join(few)} (not run on every seed the baseline has).")
            untested = sorted(set(rows.loc[~rows["tested"], "label"]))
            if untested:
                sentences.append(f"Not tested (too few matched seeds): {_join(untested)}.")
        if ranks is not None:
            sentences += _friedman_sentences(ranks[ranks["group"] == group])
        out[group] = sentences
    return out


def _friedman_sentences(ranks: pd.DataFrame) -> list[str]:
    out = []
    for arch, part in ranks.groupby("arch", sort=False):
        tested = part[part["p"].notna()]
        if tested.empty:
            continue
        r = tested.iloc[0]
        results = "; ".join(f"{METRICS[x.metric][1]} χ² = {x.statistic:.2f}, {_fmt_p(x.p)}"
                            for x in tested.itertuples())
        best = {METRICS[x.metric][1]: min(x.mean_ranks, key=x.mean_ranks.get) for x in tested.itertuples()}
        text = (f"Friedman test over {r.n_blocks} (scene, seed) blocks and {r.n_rows} {arch} students: {results}. "
                f"Best mean rank: " + ", ".join(f"{k} {v}" for k, v in best.items()) + ".")
        left = sorted({x for lo in tested["left_out"] for x in lo})
        if left:
            text += f" Left out (not run on enough of the blocks): {_join(left)}."
        if (tested["p"] >= ALPHA).all():
            text += " No difference in ranks is significant."
        out.append(text)
    return out


@dataclass
class Significance:
    """Everything the pages say about significance: the paired tests, the ranks, the sentences per group."""

    comparison: pd.DataFrame
    ranks: pd.DataFrame
    sentences: dict[str, list[str]]


def analyse(df: pd.DataFrame) -> Significance:
    """compare_to_baseline, friedman and summary_sentences of one results frame."""
    comparison, ranks = compare_to_baseline(df), friedman(df)
    return Significance(comparison, ranks, summary_sentences(comparison, ranks))
