"""The reviewer's case set (issue 16): constructed stores with known effects, zero / inf / NaN errors, ties, zero
spread, one and two seeds, a row missing pairs, failed and diverged rows, scenes 10x apart in scale, 10 methods.
Every format renders through `kdbench report`, and every sentence the report writes is checked against the data."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from kdbench.cli import main
from kdbench.reports import stats
from kdbench.reports.leaderboard import accuracy_table, load_results
from kdbench.reports.store import ResultsStore

CAMBRIDGE = ("KingsCollege", "OldHospital", "ShopFacade", "StMarysChurch")
SEVEN = ("Chess", "Fire", "Heads", "Office", "Pumpkin", "RedKitchen", "Stairs")
INF, NAN = float("inf"), float("nan")


def write(runs, rows) -> None:
    """rows: (scene, method, seed, t, r) finished students; t None: a failed job. Teachers are not needed."""
    with ResultsStore(runs) as store:
        for scene, method, seed, t, r in rows:
            job_id = f"{scene}-{method}-{seed}"
            store.upsert_job({"id": job_id, "kind": "student", "scene": scene, "method": method, "arch": "resnet18",
                              "teacher_arch": None if method == "baseline" else "resnet34", "seed": seed,
                              "config": "{}", "preset": "quick", "status": "running"})
            if t is None:
                store.upsert_job({"id": job_id, "status": "failed", "error": "RuntimeError: loss is nan"})
            else:
                store.finish_job(job_id, {"median_t": t, "median_r": r})


def grid(scenes, seeds, effects, scale=None, noise=0.1, rng_seed=0):
    """Baseline and `effects` (method -> (t factor, r factor, noise)) on every scene and seed."""
    rng = np.random.default_rng(rng_seed)
    scale = scale or dict.fromkeys(scenes, 1.0)
    rows = []
    for scene in scenes:
        for seed in seeds:
            bt, br = scale[scene] * rng.uniform(0.8, 1.2), 10 * rng.uniform(0.8, 1.2)
            rows.append((scene, "baseline", seed, bt, br))
            for method, (ft, fr, sd) in effects.items():
                rows.append((scene, method, seed, bt * ft * np.exp(rng.normal(0, sd)),
                             br * fr * np.exp(rng.normal(0, sd))))
    return rows


def every_format(runs, tmp_path, capsys, html: bool = True) -> dict[str, str]:
    """The report in every format through the command line (each must exit 0; the html page, with its plots, is
    the slow one and left out where another test renders the same kind of store)."""
    out = {}
    for fmt in ("markdown", "terminal", "json"):
        assert main(["report", "--runs-dir", str(runs), "--format", fmt]) == 0, fmt
        out[fmt] = capsys.readouterr().out
    for table in ("accuracy", "significance"):
        assert main(["report", "--runs-dir", str(runs), "--format", "csv", "--table", table]) == 0
        out[f"csv-{table}"] = capsys.readouterr().out
    if not html:
        return out
    site = tmp_path / "site"
    assert main(["report", "--runs-dir", str(runs), "--format", "html", "--out", str(site)]) == 0
    capsys.readouterr()
    out["html"] = (site / "index.html").read_text(encoding="utf-8")
    return out


def sentences(runs, group: str) -> list[str]:
    return stats.analyse(load_results(runs)).sentences[group]


# 1: inf and zero baseline medians ---------------------------------------------------------------------------
def test_inf_and_zero_baseline_medians_render_in_every_format(tmp_path, capsys):
    runs = tmp_path / "runs"
    rows = grid(("SynthRoom", "SynthStreet"), (0, 1, 2), {"sckd": (0.8, 1.0, 0.05), "vanilla": (1.0, 1.0, 0.1)})
    rows = [(sc, m, s, INF if (sc, m, s) == ("SynthRoom", "baseline", 0) else
             0.0 if (sc, m, s) == ("SynthStreet", "baseline", 1) else t, r) for sc, m, s, t, r in rows]
    write(runs, rows)
    out = every_format(runs, tmp_path, capsys)  # used to be OverflowError in markdown and html
    doc = json.loads(out["json"])
    sig = pd.DataFrame(doc["significance"])
    pooled = sig[(sig["level"] == "pooled") & (sig["metric"] == "t")].set_index("method")
    # the inf baseline is a failed baseline run: 1 pair without a reference; the zero gives a ratio of -inf/+inf
    assert set(pooled["n_base_failed"]) == {1} and set(pooled["n_zero"]) == {1} and set(pooled["n_used"]) == {4}
    text = " ".join(doc["summary"]["synthetic"])
    assert "The baseline failed on 1 of resnet18 sckd's 6 pairs: left out of its change." in text
    assert "1 pair of resnet18 sckd has a zero error, which a ratio cannot weigh: left out of its change." in text
    for fmt in ("markdown", "terminal", "html"):
        assert not re.search(r"(?<!\w)[-+]?(inf|nan)(?!\w)", out[fmt], re.I), fmt  # never printed as a number


# 2: failures are results ------------------------------------------------------------------------------------
def test_failed_and_diverged_runs_are_counted_ranked_last_and_never_called_better(tmp_path, capsys):
    runs = tmp_path / "runs"
    rows = grid(("SynthRoom", "SynthStreet"), (0, 1, 2), {"sckd": (0.7, 0.7, 0.02), "vanilla": (1.0, 1.0, 0.1),
                                                         "hint": (1.0, 1.0, 0.1)})
    diverged, failed = ("SynthRoom", "sckd", 0), ("SynthRoom", "sckd", 1)
    rows = [(sc, m, s, INF if (sc, m, s) == diverged else None if (sc, m, s) == failed else t,
             NAN if (sc, m, s) == diverged else r) for sc, m, s, t, r in rows]
    write(runs, rows)
    out = every_format(runs, tmp_path, capsys)
    comparison = stats.compare_to_baseline(load_results(runs))
    sckd = comparison[(comparison["method"] == "sckd") & (comparison["level"] == "pooled")]
    assert set(sckd["n_pairs"]) == {6} and set(sckd["n_failed"]) == {2}  # no pair dropped
    assert (sckd["p_holm"] < 0.05).all() and (sckd["direction"] == "").all()  # significant, yet not "better"
    text = " ".join(sentences(runs, "synthetic"))
    assert ("resnet18 sckd failed or diverged on 2 of 6 runs paired with the baseline (failure rate 33%): its "
            "change is over the runs that finished and is not called better.") in text
    assert "sckd's translation error is lower" not in text
    # the failure rate is in every table
    md_row = next(ln for ln in out["markdown"].splitlines() if ln.startswith("| resnet18 sckd"))
    assert md_row.rstrip(" |").endswith("2/6 (33%)")
    assert "2/6 (33%)" in out["terminal"] and "2/6 (33%)" in out["html"]
    acc = pd.read_csv(io.StringIO(out["csv-accuracy"]))
    room = acc[(acc["method"] == "sckd") & (acc["scene"] == "SynthRoom")].iloc[0]
    assert (room["n_seeds"], room["n_failed"], room["row_failed"], room["row_runs"]) == (1, 2, 2, 6)
    assert set(pd.read_csv(io.StringIO(out["csv-significance"])).query("method == 'sckd'")["n_failed"]) == {2, 0}
    # rank tests: a failed run makes the scene's value +inf, ranked last
    wide, _ = stats.block_matrix(load_results(runs), "synthetic", "resnet18", "t")
    assert wide.loc["SynthRoom", "resnet18 sckd"] == INF
    assert wide.loc["SynthRoom"].rank()["resnet18 sckd"] == wide.shape[1]


# 3: one estimator, intervals that cannot go below zero ------------------------------------------------------
def test_delta_average_and_tests_use_one_geometric_estimator(tmp_path, capsys):
    runs = tmp_path / "runs"
    scale = dict(zip(CAMBRIDGE[:3], (0.3, 3.0, 30.0)))  # 10x apart
    # sckd: much better on the small scene, a little worse on the large one: arithmetic means of metres would
    # follow the large scene, log ratios weigh every scene alike
    rows = []
    rng = np.random.default_rng(1)
    for scene, s in scale.items():
        for seed in (0, 1, 2):
            b = s * rng.uniform(0.5, 1.5)
            factor = {"KingsCollege": 0.5, "OldHospital": 0.9, "ShopFacade": 1.08}[scene]
            rows += [(scene, "baseline", seed, b, 10.0), (scene, "sckd", seed, b * factor * rng.uniform(0.9, 1.1), 9.0),
                     (scene, "vanilla", seed, b * rng.uniform(0.2, 3.0), 10.0)]
    write(runs, rows)
    out = every_format(runs, tmp_path, capsys, html=False)
    df = load_results(runs)
    acc = accuracy_table(df).set_index(["scene", "method"])
    raw = pd.DataFrame(rows, columns=["scene", "method", "seed", "t", "r"]).pivot_table(
        index=["scene", "seed"], columns="method", values="t")
    lr = np.log(raw["sckd"] / raw["baseline"])
    for scene in scale:
        assert acc.loc[(scene, "sckd"), "dt_pct"] == pytest.approx(100 * np.expm1(lr[scene].mean()))
    scene_level = lr.groupby(level="scene").mean()
    assert acc.loc[("average", "sckd"), "dt_pct"] == pytest.approx(100 * np.expm1(scene_level.mean()))
    comparison = stats.compare_to_baseline(df)
    headline = comparison.query("level == 'scenes' and method == 'sckd' and metric == 't'").iloc[0]
    assert headline["change_pct"] == pytest.approx(acc.loc[("average", "sckd"), "dt_pct"])
    t = sst.ttest_1samp(scene_level, 0.0)
    assert headline["p"] == pytest.approx(t.pvalue) and headline["n_scenes"] == 3
    # the same number in the significance table
    md = out["markdown"]
    assert f"{headline['change_pct']:+.0f}% [" in md.split("Against the student alone")[1]
    # the table's Δ and the JSON agree with the comparison; every error interval is above zero
    assert (acc["t_ci_lo"].dropna() > 0).all() and (acc["r_ci_lo"].dropna() > 0).all()
    vanilla = acc.loc[("KingsCollege", "vanilla")]
    logs = np.log(raw.loc["KingsCollege", "vanilla"])
    half = sst.t.ppf(0.975, 2) * sst.sem(logs)
    assert [vanilla["t_ci_lo"], vanilla["t_ci_hi"]] == pytest.approx(np.exp([logs.mean() - half, logs.mean() + half]))


# 4: zero spread, ties and zero errors each have their own words ----------------------------------------------
def test_constant_change_tie_and_zero_error_have_honest_words(tmp_path, capsys):
    runs = tmp_path / "runs"
    rows = grid(("SynthRoom", "SynthStreet"), (0, 1, 2), {})
    base = {(sc, s): (t, r) for sc, m, s, t, r in rows}
    for (sc, s), (t, r) in base.items():
        rows.append((sc, "sckd", s, 0.9 * t, r * 1.2 if s else r * 0.8))  # -10% on every pair, exactly
        rows.append((sc, "vanilla", s, t, r))  # identical to the baseline
        rows.append((sc, "hint", s, 0.0 if (sc, s) == ("SynthRoom", 0) else 1.1 * t, 1.1 * r))  # one zero error
    write(runs, rows)
    out = every_format(runs, tmp_path, capsys, html=False)
    comparison = stats.compare_to_baseline(load_results(runs)).set_index(["level", "scene", "method", "metric"])
    sckd = comparison.loc[("pooled", "average", "sckd", "t")]
    assert sckd["test"] == "sign" and sckd["p"] == pytest.approx(2 / 2**6) and sckd["tested"]
    assert sckd["change_pct"] == pytest.approx(-10.0)
    vanilla = comparison.loc[("pooled", "average", "vanilla", "t")]
    assert vanilla["test"] == "identical" and vanilla["p"] == 1.0
    text = " ".join(json.loads(out["json"])["summary"]["synthetic"])
    assert "Not tested" not in text
    assert ("resnet18 sckd changes translation by the same -10% on every one of its 6 pairs (no spread, so no "
            "t-test): the exact sign test gives p = 0.031") in text
    assert "resnet18 vanilla's translation errors equal the baseline's on all 6 pairs (a tie)." in text
    assert "1 pair of resnet18 hint has a zero error, which a ratio cannot weigh: left out of its change." in text
    assert "p = nan" not in text.lower()


# 5 and 8: the population of a claim -------------------------------------------------------------------------
def test_two_seeds_two_scenes_never_say_significantly_better(tmp_path, capsys):
    runs = tmp_path / "runs"
    write(runs, grid(("SynthRoom", "SynthStreet"), (0, 1), {"sckd": (0.8, 0.8, 0.02), "vanilla": (1, 1, 0.1)}))
    out = every_format(runs, tmp_path, capsys)
    for fmt, text in out.items():
        assert "significantly better" not in text, fmt
    text = " ".join(sentences(runs, "synthetic"))
    assert "2 scenes are too few for a scene-level claim" in text
    assert "a result about these 2 scenes only" in text


def test_scene_level_claim_with_enough_scenes(tmp_path, capsys):
    runs = tmp_path / "runs"
    scale = dict(zip(CAMBRIDGE, (0.3, 1.0, 3.0, 10.0)))
    write(runs, grid(CAMBRIDGE, (0, 1), {"sckd": (0.7, 1.0, 0.03), "vanilla": (1.0, 1.0, 0.1)}, scale=scale))
    every_format(runs, tmp_path, capsys, html=False)
    comparison = stats.compare_to_baseline(load_results(runs))
    head = comparison.query("level == 'scenes' and method == 'sckd' and metric == 't'").iloc[0]
    effects = stats.scene_effects(stats.log_ratios(load_results(runs)))
    x = effects.query("method == 'sckd' and metric == 't'")["log_ratio"]
    assert head["n_scenes"] == 4 and head["p"] == pytest.approx(sst.ttest_1samp(x, 0).pvalue)
    text = " ".join(sentences(runs, "cambridge"))
    assert (f"Cambridge Landmarks: across scenes, resnet18 sckd is significantly better in translation "
            f"({head['change_pct']:+.0f}%") in text
    n = int(comparison.query("level == 'scenes'")["tested"].sum())
    assert f"then a t-test over 4 scenes, Holm-corrected over the {n} tested comparisons (2 methods" in text


# 6: one seed; Friedman's clause; no NaN χ² -----------------------------------------------------------------
def test_one_seed_friedman_always_has_its_clause(tmp_path, capsys):
    runs = tmp_path / "runs"
    write(runs, grid(CAMBRIDGE[:3], (0,), {"sckd": (0.5, 0.5, 0.01), "vanilla": (1.0, 1.0, 0.01),
                                           "hint": (1.5, 1.5, 0.01)}))
    every_format(runs, tmp_path, capsys, html=False)
    ranks = stats.friedman(load_results(runs))
    text = " ".join(sentences(runs, "cambridge"))
    for r in ranks.itertuples():
        clause = "significant at 0.05" if r.p < 0.05 else "not significant at 0.05"
        assert f"{stats.METRICS[r.metric][1]} χ² = {r.statistic:.2f}" in text
        assert f"permutation {stats._fmt_p(r.p)}, {clause}" in text
    assert "on these 3 scenes: with one seed no claim can be made" in text


def test_all_tied_friedman_says_so_and_never_draws_nan(tmp_path, capsys):
    runs = tmp_path / "runs"
    rows = [(sc, m, 0, 1.0, 5.0) for sc in CAMBRIDGE[:3] for m in ("baseline", "vanilla", "sckd")]
    write(runs, rows)
    out = every_format(runs, tmp_path, capsys)
    text = " ".join(sentences(runs, "cambridge"))
    assert "translation: every row ties on every scene (no difference in ranks)" in text
    for fmt, page in out.items():
        assert "χ² = nan" not in page and "= nan" not in page.lower(), fmt
    from kdbench.reports import plots

    wide, left = stats.block_matrix(load_results(runs), "cambridge", "resnet18", "t")
    title = plots.cd_title("cambridge", "resnet18", "t", len(wide), stats.friedman_test(wide), left)
    assert "every row ties on every scene" in title and "nan" not in title


# 7 and 9: Friedman blocks are scenes; incomplete rows are dropped and named ---------------------------------
def test_friedman_over_scenes_drops_incomplete_rows_and_names_them(tmp_path, capsys):
    runs = tmp_path / "runs"
    rows = grid(CAMBRIDGE[:3], (0, 1, 2, 3, 4), {"sckd": (0.8, 1.0, 0.05), "vanilla": (1.0, 1.0, 0.05)})
    rows += [r for r in grid(CAMBRIDGE[:3], (0,), {"hint": (0.9, 1.0, 0.05)}) if r[1] == "hint"]  # 1 of 5 seeds
    rows += [r for r in grid(CAMBRIDGE[:2], (0, 1, 2, 3, 4), {"rkd": (1.0, 1.0, 0.05)}) if r[1] == "rkd"]
    write(runs, rows)
    every_format(runs, tmp_path, capsys, html=False)
    df = load_results(runs)
    ranks = stats.friedman(df).set_index("metric")
    assert ranks.loc["t", "n_blocks"] == 3 and ranks.loc["t", "n_rows"] == 4  # hint stays: it has every scene
    assert ranks.loc["t", "left_out"] == ["resnet18 rkd"]
    wide, _ = stats.block_matrix(df, "cambridge", "resnet18", "t")
    raw = pd.DataFrame(rows, columns=["scene", "method", "seed", "t", "r"])
    sckd = raw[raw["method"] == "sckd"]
    gm = np.exp(np.log(sckd["t"]).groupby(sckd["scene"]).mean())  # seeds averaged by geometric mean
    assert wide["resnet18 sckd"].to_dict() == pytest.approx(gm.to_dict())
    res = sst.friedmanchisquare(*[wide[c] for c in wide.columns])
    assert ranks.loc["t", "statistic"] == pytest.approx(res.statistic)
    text = " ".join(sentences(runs, "cambridge"))
    assert "Friedman test over 3 scenes" in text and "Left out (no result on every scene): resnet18 rkd." in text
    # Holm's sentence counts the tested rows only (rkd has 2 scenes: no scene-level test)
    scene_level = stats.compare_to_baseline(df).query("level == 'scenes'")
    assert not scene_level.query("method == 'rkd'")["tested"].any()
    assert set(scene_level.loc[scene_level["tested"], "n_tests"]) == {6}
    assert "Holm-corrected over the 6 tested comparisons (3 methods x translation and rotation)" in text


# 10: pairwise Wilcoxon with Holm instead of Nemenyi ----------------------------------------------------------
def test_pairwise_wilcoxon_holm_post_hoc(tmp_path, capsys):
    runs = tmp_path / "runs"
    write(runs, grid(SEVEN, (0,), {"sckd": (0.5, 1.0, 0.05), "vanilla": (1.0, 1.0, 0.05)}))
    every_format(runs, tmp_path, capsys, html=False)
    df = load_results(runs)
    post = stats.pairwise(df).query("metric == 't'").set_index(["a", "b"])
    wide, _ = stats.block_matrix(df, "7scenes", "resnet18", "t")
    ps = []
    for (a, b), r in post.iterrows():
        p = sst.wilcoxon(np.log(wide[a]) - np.log(wide[b])).pvalue
        assert r["p"] == pytest.approx(p)
        ps.append(p)
    assert list(post["p_holm"]) == pytest.approx(list(stats.holm(ps)))
    assert post.loc[("resnet18 baseline (no KD)", "resnet18 sckd"), "significant"]
    text = " ".join(sentences(runs, "7scenes"))
    assert "pairwise Wilcoxon signed-rank tests over the 7 scenes" in text
    assert "resnet18 baseline (no KD) and resnet18 sckd in translation (adjusted p = 0.047)" in text
    assert "Nemenyi" not in text


def test_cd_diagram_draws_wilcoxon_cliques(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scikit_posthocs")
    from kdbench.reports import plots

    runs = tmp_path / "runs"
    write(runs, grid(SEVEN, (0,), {"sckd": (0.5, 1.0, 0.05), "vanilla": (1.0, 1.0, 0.05)}))
    path = plots.cd_diagram(load_results(runs), "7scenes", "resnet18", "t", tmp_path / "cd.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"


# 11: one Holm family --------------------------------------------------------------------------------------
def test_one_holm_family_methods_by_metrics(tmp_path):
    runs = tmp_path / "runs"
    write(runs, grid(("SynthRoom", "SynthStreet"), (0, 1, 2), {"sckd": (0.8, 0.9, 0.05), "vanilla": (1, 1, 0.1),
                                                              "hint": (1.1, 1.0, 0.1)}))
    pooled = stats.compare_to_baseline(load_results(runs)).query("level == 'pooled'")
    assert set(pooled["n_tests"]) == {6}
    np.testing.assert_allclose(pooled["p_holm"], stats.holm(pooled["p"].to_numpy()), rtol=1e-12)
    text = " ".join(sentences(runs, "synthetic"))
    assert "Per-scene marks († in a scene's column) are exploratory" in text


# the whole case set ---------------------------------------------------------------------------------------
METHODS10 = ("vanilla", "attentive", "similarity", "hint", "sckd", "rkd", "pkt", "at", "fitnet")


def _case_set(runs) -> list[tuple]:
    scale = dict(zip(CAMBRIDGE[:3], (0.3, 3.0, 30.0)))
    effects = {m: (1.0, 1.0, 0.1) for m in METHODS10}
    effects["sckd"] = (0.7, 0.9, 0.02)
    rows = grid(CAMBRIDGE[:3], (0, 1), effects, scale=scale, rng_seed=4)
    base = {(sc, s): (t, r) for sc, m, s, t, r in rows if m == "baseline"}
    out = []
    for sc, m, s, t, r in rows:
        if m == "similarity" and s == 1:
            continue  # a row missing pairs
        if m == "pkt" and (sc, s) == ("OldHospital", 0):
            t = None  # a failed job
        if m == "rkd" and (sc, s) == ("KingsCollege", 1):
            t, r = INF, NAN  # a diverged run
        if m == "at":
            t, r = base[(sc, s)]  # ties: identical errors
        if m == "attentive":
            t = 0.95 * base[(sc, s)][0]  # zero spread
        if m == "hint" and (sc, s) == ("ShopFacade", 0):
            t = 0.0  # a zero error
        out.append((sc, m, s, t, r))
    out.append(("Stairs", "baseline", 0, 0.2, 5.0))  # a one-seed group beside it
    out.append(("Stairs", "sckd", 0, 0.1, 5.0))
    write(runs, out)
    return out


CHECKS = [  # every sentence the report may write, and what it must agree with
    re.compile(r"(?P<title>[\w -]+): (?P<n>one scene is|\d+ scenes are) too few for a scene-level claim"),
    re.compile(r"[\w -]+: across scenes, (?P<claims>.+); no other difference is significant"),
    re.compile(r"[\w -]+: across scenes, no method is significantly better or worse"),
    re.compile(r"[\w -]+: no scene-level test"),
    re.compile(r"[\w -]+, on (these \d+ scenes|\w+): (?P<claims>.+); no other difference is significant"),
    re.compile(r"[\w -]+, on (these \d+ scenes|\w+): no method's error differs significantly"),
    re.compile(r"[\w -]+, on (these \d+ scenes|\w+): with (one seed|\d+ \(scene, seed\) pairs?) no claim"),
    re.compile(r"(?P<label>resnet18 \w+) failed or diverged on (?P<k>\d+) of (?P<n>\d+) runs?"),
    re.compile(r"The baseline failed on (?P<k>\d+) of (?P<label>resnet18 \w+)'s"),
    re.compile(r"(?P<k>\d+) pairs? of (?P<label>resnet18 \w+) ha(s|ve) a zero error"),
    re.compile(r"(?P<label>resnet18 \w+) changes (?P<what>\w+) by the same (?P<pct>[-+]?\d+)% on every one"),
    re.compile(r"(?P<label>resnet18 \w+)'s (?P<what>\w+) errors equal the baseline's on all (?P<n>\d+) pairs"),
    re.compile(r"Fewer pairs for (?P<labels>.+) \(not run on every seed"),
    re.compile(r"Per-scene marks"),
    re.compile(r"Friedman test over (?P<n>\d+) scenes"),
]


def test_reviewer_case_set_renders_and_every_sentence_is_true(tmp_path, capsys):
    runs = tmp_path / "runs"
    rows = _case_set(runs)
    out = every_format(runs, tmp_path, capsys)
    for fmt, text in out.items():
        assert "χ² = nan" not in text and "p = nan" not in text, fmt
    raw = pd.DataFrame(rows, columns=["scene", "method", "seed", "t", "r"])
    df = load_results(runs)
    comparison = stats.compare_to_baseline(df)
    summary = json.loads(out["json"])["summary"]
    assert set(summary) == {"cambridge", "7scenes"}
    for group, group_sentences in summary.items():
        for sentence in group_sentences:
            match = next((m for c in CHECKS if (m := c.match(sentence))), None)
            assert match is not None, f"unchecked sentence: {sentence}"
            _check(match, sentence, group, raw, comparison)
    text = " ".join(summary["cambridge"])
    for needed in ("resnet18 pkt failed or diverged on 1 of 6 runs", "resnet18 rkd failed or diverged on 1 of 6",
                   "1 pair of resnet18 hint has a zero error", "resnet18 attentive changes translation by the same -5%",
                   "resnet18 at's translation errors equal the baseline's on all 6 pairs",
                   "Fewer pairs for resnet18 similarity", "Friedman test over 3 scenes"):
        assert needed in text
    assert "7-Scenes: one scene is too few for a scene-level claim" in " ".join(summary["7scenes"])
    # 10 rows in the CSV, the failure rates in the markdown table
    acc = pd.read_csv(io.StringIO(out["csv-accuracy"]))
    assert acc.query("group == 'cambridge' and role == 'student'")["method"].nunique() == 10
    md_rows: dict[str, str] = {}  # the leaderboard's row: the first table a row appears in (claims follow)
    for ln in out["markdown"].splitlines():
        if ln.startswith("| resnet18"):
            md_rows.setdefault(ln.split("|")[1].strip(), ln)
    assert md_rows["resnet18 pkt"].rstrip(" |").endswith("1/6 (17%)")


def _check(match: re.Match, sentence: str, group: str, raw: pd.DataFrame, comparison: pd.DataFrame) -> None:
    """One sentence against the constructed data (independent counts) and the comparison it reports."""
    g = match.groupdict()
    scenes = {"cambridge": CAMBRIDGE[:3], "7scenes": ("Stairs",)}[group]
    part = raw[raw["scene"].isin(scenes)]
    if "too few for a scene-level claim" in sentence:
        n = 1 if g["n"].startswith("one") else int(g["n"].split()[0])
        assert n == len(scenes) and n < stats.MIN_SCENES
    elif "failed or diverged on" in sentence:
        method = g["label"].split()[1]
        rows = part[part["method"] == method]
        bad = rows["t"].isna() | ~np.isfinite(rows["t"].astype(float)) | rows["r"].isna()
        assert (int(g["k"]), int(g["n"])) == (int(bad.sum()), len(rows))
    elif "zero error" in sentence:
        method = g["label"].split()[1]
        assert int(g["k"]) == int((part.loc[part["method"] == method, "t"] == 0).sum())
    elif "by the same" in sentence:
        method = g["label"].split()[1]
        col = "t" if g["what"] == "translation" else "r"
        pivot = part.pivot_table(index=["scene", "seed"], columns="method", values=col)
        ratio = 100 * (pivot[method] / pivot["baseline"] - 1)
        assert np.ptp(ratio) < 1e-9 and round(ratio.iloc[0]) == int(g["pct"])
    elif "errors equal the baseline's" in sentence:
        method = g["label"].split()[1]
        col = "t" if g["what"] == "translation" else "r"
        pivot = part.pivot_table(index=["scene", "seed"], columns="method", values=col)
        assert (pivot[method] == pivot["baseline"]).all() and int(g["n"]) == len(pivot)
    elif sentence.startswith("Fewer pairs"):
        for label in g["labels"].split(" and "):
            method = label.split()[1]
            assert len(part[part["method"] == method]) < len(part[part["method"] == "baseline"])
    elif "claims" in g and g["claims"]:
        level = "scenes" if "across scenes" in sentence else ("pooled" if "these" in sentence else "seeds")
        rows = comparison[(comparison["group"] == group) & (comparison["level"] == level)]
        claimed = rows[rows["direction"] != ""]
        for r in claimed.itertuples():
            assert r.label in g["claims"] and r.n_failed == 0 or r.direction == "worse"
        assert len(re.findall(r"resnet18 \w+", g["claims"])) == len(claimed)


def test_a_store_of_validation_scored_jobs_only_reports_in_every_format(tmp_path, capsys):
    # A runs folder after `kdbench tune` holds only eval_split=val jobs: the leaderboard is empty, and the
    # claims' empty pairs frame must not index columns with its empty `usable` column (KeyError 'group').
    with ResultsStore(tmp_path) as store:
        for method in ("baseline", "vanilla"):
            store.upsert_job({"id": f"val-{method}", "kind": "student", "scene": "SynthRoom", "method": method,
                              "arch": "resnet18", "teacher_arch": None if method == "baseline" else "resnet34",
                              "seed": 0, "config": {"eval_split": "val"}, "preset": "quick",
                              "status": "running"})
            store.finish_job(f"val-{method}", {"median_t": 1.0, "median_r": 10.0})
    assert load_results(tmp_path).empty
    for fmt in ("markdown", "terminal", "json", "csv"):
        assert main(["report", "--runs-dir", str(tmp_path), "--format", fmt]) == 0, capsys.readouterr().err
    capsys.readouterr()
