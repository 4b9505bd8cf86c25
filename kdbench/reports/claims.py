"""What the report may claim per row and metric beyond significance: equivalence, power, bootstrap, variance.

Frames in, frames out (kdbench.reports.power, equivalence, bootstrap, variance); the leaderboard and the html
page render `claims_display`. Report options travel in the results frame's attrs, like the preset:
`rope` (default 2%) and `bootstrap_seed` (default 0).

Pairs are `stats.log_ratios`' (a KD row matched with the baseline student of its architecture by scene and
student seed; in a crossed design the runs of one student seed with its several teachers count as one pair),
their usable (finite) log ratios only: failures and zero errors are counted by the significance tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from kdbench.reports import bootstrap, equivalence, power, stats, variance
from kdbench.reports.rows import row_labels, shown_jobs

METRICS = stats.METRICS


def students(df: pd.DataFrame) -> pd.DataFrame:
    """The shown student jobs with `label` and `teacher_seed` (teacher_seed or seed, as the store derives it)."""
    jobs = shown_jobs(df)
    jobs = jobs[jobs["role"] == "student"].copy()
    jobs["label"] = row_labels(jobs) if len(jobs) else []
    if "teacher_seed" not in jobs:
        jobs["teacher_seed"] = jobs["seed"]
    jobs["teacher_seed"] = jobs["teacher_seed"].fillna(jobs["seed"]).astype(int)
    return jobs


def matched_log_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """The usable pairs of `stats.log_ratios` (finite log ratios), one row per row, metric, scene and seed."""
    pairs = stats.log_ratios(df)
    # astype: an empty frame's object column would index columns, not rows (a store of tuning jobs only)
    return pairs[pairs["usable"].astype(bool)].reset_index(drop=True)


@dataclass
class Claims:
    """Per row and metric: TOST verdicts, power, bootstrap intervals, variance shares; and the options used."""

    pairs: pd.DataFrame
    equivalence: pd.DataFrame
    power: pd.DataFrame
    change: pd.DataFrame
    errors: pd.DataFrame
    variance: pd.DataFrame
    rope: float
    bootstrap_seed: int
    _table: pd.DataFrame | None = field(default=None, init=False, repr=False)

    def table(self) -> pd.DataFrame:
        """The four frames joined on (group, arch, teacher_arch, method, label, metric): what every format shows
        (joined once; every renderer asks for it per group)."""
        if self._table is None:
            key = ["group", "arch", "teacher_arch", "method", "label", "metric"]
            out = self.equivalence.merge(self.power.drop(columns=["n_pairs"]), on=key, how="left")
            out = out.merge(self.change.drop(columns=["n_pairs"]), on=key, how="left")
            self._table = out.merge(self.variance, on=key, how="left")
        return self._table


def analyse_claims(df: pd.DataFrame, rope: float | None = None, seed: int | None = None) -> Claims:
    """Every claim frame of one results frame (rope, seed default to df.attrs, then 2% and 0)."""
    rope = float(df.attrs.get("rope", equivalence.DEFAULT_ROPE) if rope is None else rope)
    seed = int(df.attrs.get("bootstrap_seed", bootstrap.BOOTSTRAP_SEED) if seed is None else seed)
    jobs = students(df)
    pairs = matched_log_ratios(df)
    per_seed = one_run_per_student_seed(df, jobs)  # the bootstrap counts student seeds, as cells and pairs do
    return Claims(pairs, equivalence.equivalence_table(pairs, rope), power.power_table(pairs),
                  bootstrap.change_table(pairs, per_seed, seed=seed), bootstrap.error_table(per_seed, seed=seed),
                  variance.variance_table(jobs), rope, seed)


def one_run_per_student_seed(df: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """The shown student `jobs`, with a crossed design's runs of one student seed (one per teacher) collapsed to
    one, their median errors' geometric mean (kdbench.reports.crossed); `jobs` as they are otherwise.

    As in the leaderboard cells and the pairs, a student seed fails when any of its runs did (a failure is never
    averaged away), and is then left out here as failed runs are. The variance decomposition keeps every run:
    it is what splits the teachers' share from the students'."""
    from kdbench.reports.crossed import cells_per_student_seed, teachers_per_student_seed
    from kdbench.reports.rows import result_jobs

    key = ["group", "scene", "role", "arch", "teacher_arch", "method", "label"]
    runs = result_jobs(df)
    runs = runs[runs["role"] == "student"].copy()
    if runs.empty or teachers_per_student_seed(runs, key[:-1]) <= 1:
        return jobs
    runs["label"] = row_labels(runs)
    out = cells_per_student_seed(runs, ["median_t", "median_r"], key)
    return out[~out["failed"]].drop(columns=["failed", "_runs", "_failed_runs"]).reset_index(drop=True)


def _pct(v: float) -> str:
    return "–" if pd.isna(v) else ("0%" if round(v) == 0 else f"{v:+.0f}%")


def claims_caption(claims: Claims) -> str:
    """What the claims table's columns mean, with the ROPE and the bootstrap seed used."""
    r = f"{100 * claims.rope:g}%"
    return (f"Verdict against the student alone with a region of practical equivalence of ±{r} (a change smaller "
            f"than that does not matter; `--rope`): better / practically equivalent / worse from one-sided paired "
            f"t-tests on the log error ratios at ±{r} (TOST, 0.05 each; the 90% interval below, inside or above "
            f"the region), else undecided; pooled over the matched (scene, student seed) pairs: a claim on these "
            f"scenes. MDC: the minimum change the paired t-test detects with 80% power at 0.05 over these pairs "
            f"at their observed SD of the log ratio (noncentral t). IQM Δ: interquartile mean of the pairs' "
            f"log ratios as a change, P(better): probability that a run beats a baseline run on the same scene "
            f"(averaged over scenes; in a crossed design a run is a student seed, the geometric mean over its "
            f"teachers), each with a 95% stratified bootstrap interval (seeds resampled within "
            f"scenes, {bootstrap.BOOTSTRAP_SAMPLES} resamples, seed {claims.bootstrap_seed}). Variance: share of "
            f"the row's log-error variance that is the teacher's / the student's (crossed --teacher-seeds x "
            f"--student-seeds runs, two-way random effects; '–' with one teacher per student seed).")


def claims_display(claims: Claims, group: str) -> pd.DataFrame:
    """One group's claims as strings: a row per (row, metric)."""
    table = claims.table()
    table = table[table["group"] == group]
    rows = []
    for r in table.itertuples():
        ci = (f" [{_pct(r.iqm_change_lo_pct)}, {_pct(r.iqm_change_hi_pct)}]"
              if pd.notna(r.iqm_change_lo_pct) else "")
        p = "–" if pd.isna(r.p_improvement) else (f"{r.p_improvement:.2f} [{r.p_improvement_lo:.2f}, "
                                                  f"{r.p_improvement_hi:.2f}]")
        mdc = "–" if pd.isna(r.mdc_pct) else (f"±{r.mdc_pct:.0f}%" if r.mdc_pct < 100 else "> ±100%")
        var = ("–" if pd.isna(r.teacher_pct) else f"{r.teacher_pct:.0f}% / {r.student_pct:.0f}%")
        rows.append({"method": r.label, "metric": METRICS[r.metric][1], "pairs": str(int(r.n_pairs)),
                     f"verdict (±{100 * claims.rope:g}%)": r.verdict, "MDC 80%": mdc,
                     "IQM Δ (95% CI)": f"{_pct(r.iqm_change_pct)}{ci}", "P(better) (95% CI)": p,
                     "variance teacher / student": var})
    return pd.DataFrame(rows)


def seeds_needed_display(df: pd.DataFrame, change: float) -> pd.DataFrame:
    """`kdbench report --seeds-needed 5%`: per row and metric, the seeds per scene the change needs."""
    table = power.seeds_table(matched_log_ratios(df), change)
    rows = []
    for r in table.itertuples():
        need = "–" if pd.isna(r.sd_pair) else (f"> {power.MAX_SEEDS}" if r.seeds_needed is None or
                                               (isinstance(r.seeds_needed, float) and math.isnan(r.seeds_needed))
                                               else str(int(r.seeds_needed)))
        rows.append({"group": r.group, "method": r.label, "metric": METRICS[r.metric][1],
                     "scenes": str(r.n_scenes), "SD of log ratio": "–" if pd.isna(r.sd_pair) else f"{r.sd_pair:.3f}",
                     "seeds now": f"{r.seeds_now:g}",
                     "power now": "–" if pd.isna(r.power_now) else f"{100 * r.power_now:.0f}%",
                     "seeds needed": need})
    return pd.DataFrame(rows)
