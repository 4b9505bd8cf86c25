"""Stratified bootstrap: IQM of errors and of the change, P(improvement), performance profiles; reproducible."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sst

from kdbench.cli import main
from kdbench.reports import bootstrap
from kdbench.reports.claims import matched_log_ratios
from kdbench.reports.leaderboard import load_results

sys.path.insert(0, str(Path(__file__).parent))
from test_stats import make_store  # noqa: E402  (the shared constructed store)


def test_resamples_stay_within_their_scene():
    strata = [np.full(3, 1.0), np.full(5, 2.0), np.full(2, 3.0)]
    m = bootstrap.resample(strata, np.random.default_rng(0), 100)
    assert m.shape == (100, 10)
    assert (m[:, :3] == 1).all() and (m[:, 3:8] == 2).all() and (m[:, 8:] == 3).all()


def test_iqm_is_the_interquartile_mean():
    x = np.array([5.0, 1.0, 2.0, 3.0, 4.0, 100.0, 0.0, 6.0])
    assert bootstrap.iqm(x) == pytest.approx(np.mean(np.sort(x)[2:6]))


def test_interval_contains_the_true_iqm_and_covers_about_95_percent():
    # 3 scenes x 8 seeds of log ratios around -0.1 (symmetric noise: the true IQM is -0.1), scenes offset
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(60):
        strata = [rng.normal(-0.1 + off, 0.05, 8) for off in (-0.02, 0.0, 0.02)]
        point, lo, hi = bootstrap.stratified_interval(strata, samples=500, seed=2)
        assert lo <= point <= hi
        hits += lo <= -0.1 <= hi
    assert hits >= 48  # percentile intervals of 24 values run a little short of 95%
    strata = [rng.normal(-0.1, 0.05, 40) for _ in range(3)]
    _, lo, hi = bootstrap.stratified_interval(strata)
    assert lo < -0.1 < hi and hi - lo < 0.05


def test_same_seed_same_interval_other_seed_other_interval():
    strata = [np.random.default_rng(3).normal(size=6) for _ in range(2)]
    a = bootstrap.stratified_interval(strata, seed=7)
    assert bootstrap.stratified_interval(strata, seed=7) == a
    assert bootstrap.stratified_interval(strata, seed=8) != a


def test_probability_of_improvement():
    base = [np.array([1.0, 1.1, 1.2]), np.array([4.0, 4.4])]
    assert bootstrap.prob_improvement([b * 0.5 for b in base], base) == 1.0
    assert bootstrap.prob_improvement([b * 2 for b in base], base) == 0.0
    assert bootstrap.prob_improvement(base, base) == pytest.approx(0.5)  # ties count a half
    # known: X ~ N(0, 1), Y ~ N(1, 1) gives P(X < Y) = Phi(1 / sqrt 2)
    rng = np.random.default_rng(4)
    x, y = [rng.normal(0, 1, 60) for _ in range(3)], [rng.normal(1, 1, 60) for _ in range(3)]
    p, lo, hi = bootstrap.prob_improvement_interval(x, y)
    truth = sst.norm.cdf(1 / math.sqrt(2))
    assert lo < truth < hi and lo <= p <= hi


def test_performance_profile_is_the_share_under_each_level():
    strata = [np.array([0.5, 1.0, 2.0]), np.array([0.8, 1.2])]
    taus = np.array([0.4, 0.9, 1.0, 5.0])
    share, lo, hi = bootstrap.performance_profile(strata, taus, samples=300)
    assert share.tolist() == [0.0, 0.4, 0.6, 1.0]
    assert (lo <= share).all() and (share <= hi).all() and lo[-1] == hi[-1] == 1.0


def test_report_intervals_recomputed_and_reproducible(tmp_path, capsys):
    runs = make_store(tmp_path)
    assert main(["report", "--runs-dir", str(runs), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert main(["report", "--runs-dir", str(runs), "--format", "json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert doc["claims"] == again["claims"] and doc["bootstrap_errors"] == again["bootstrap_errors"]
    assert doc["bootstrap_seed"] == 0
    pairs = matched_log_ratios(load_results(runs))
    for row in doc["claims"]:
        d = pairs[(pairs["label"] == row["label"]) & (pairs["metric"] == row["metric"])]["log_ratio"]
        assert row["iqm_change_pct"] == pytest.approx(100 * math.expm1(sst.trim_mean(d, 0.25)), abs=1e-9)
        assert row["iqm_change_lo_pct"] <= row["iqm_change_pct"] <= row["iqm_change_hi_pct"]
        assert 0 <= row["p_improvement_lo"] <= row["p_improvement"] <= row["p_improvement_hi"] <= 1
    # sckd's translation error is 0.7 times the baseline's with 2% noise: every interval says so
    sckd = [r for r in doc["claims"] if r["method"] == "sckd" and r["metric"] == "t"][0]
    assert -33 < sckd["iqm_change_lo_pct"] < -30 < sckd["iqm_change_hi_pct"] < -27
    assert sckd["p_improvement"] == 1.0
    base = [r for r in doc["bootstrap_errors"] if r["method"] == "baseline" and r["metric"] == "t"
            and r["scene"] == "SynthRoom"][0]
    assert base["n_runs"] == 3 and base["iqm_lo"] <= base["iqm"] <= base["iqm_hi"]


def test_profile_plot_replaces_the_cdfs(tmp_path):
    pytest.importorskip("matplotlib")
    runs = make_store(tmp_path / "runs")
    out = tmp_path / "plots"
    assert main(["report", "--runs-dir", str(runs), "--plots", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "profile-synthetic.png" in names and not any(n.startswith("cdf-") for n in names)
    from kdbench.reports.claims import students
    from kdbench.reports.plots import profile_figure

    fig = profile_figure(students(load_results(runs)), "synthetic", "resnet18")
    ax_t, ax_r = fig.axes
    assert ax_t.get_xscale() == "log" and len(ax_t.collections) == 5  # a band per student row
    # the baseline's line ends at 1 (all runs counted) and crosses 1/2 near its own level
    labels = [t.get_text() for t in ax_r.get_legend().get_texts()]
    assert any(t.startswith("resnet18 baseline (no KD) (6 runs)") for t in labels)
