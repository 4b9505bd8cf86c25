"""Statistics of the leaderboard: every interval, p-value, Holm decision and Friedman statistic the report
prints equals an independent scipy recomputation from the store's rows; the caption says what they allow."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from kdbench.cli import main
from kdbench.reports import stats
from kdbench.reports.leaderboard import AVERAGE, load_results
from kdbench.reports.store import ResultsStore

SCENES = {"SynthRoom": 0.5, "SynthStreet": 4.0}  # metres: the two scenes' errors differ by a factor of 8


def add_job(store: ResultsStore, job_id: str, kind: str, scene: str, method: str, seed: int, t: float,
            r: float) -> None:
    """A finished job as the runner records it (teacher rows resnet34, students resnet18 taught by it)."""
    store.upsert_job({"id": job_id, "kind": kind, "scene": scene, "method": method,
                      "arch": "resnet34" if kind == "teacher" else "resnet18",
                      "teacher_arch": "resnet34" if kind == "student" else None, "seed": seed, "config": "{}",
                      "preset": "quick", "status": "running"})
    store.finish_job(job_id, {"median_t": t, "median_r": r, "mean_t": 1.2 * t, "mean_r": 1.1 * r})


def add_failed(store: ResultsStore, job_id: str, scene: str, method: str, seed: int) -> None:
    """A student job that failed (no metrics), as the runner records it."""
    store.upsert_job({"id": job_id, "kind": "student", "scene": scene, "method": method, "arch": "resnet18",
                      "teacher_arch": "resnet34", "seed": seed, "config": "{}", "preset": "quick",
                      "status": "failed", "error": "RuntimeError: diverged"})


def make_store(runs, seeds=(0, 1, 2), effects=None, noise=0.1, rng_seed=3, failed=()):
    """Teacher + students on both synthetic scenes; `effects`: method -> (t factor, r factor, noise); `failed`:
    (scene, method, seed) recorded as failed jobs instead."""
    effects = effects or {"vanilla": (1.0, 1.0, noise), "sckd": (0.7, 0.95, 0.02), "rkd": (1.0, 1.25, 0.03),
                          "hint": (1.05, 1.0, noise)}
    rng = np.random.default_rng(rng_seed)
    with ResultsStore(runs) as store:
        for scene, scale in SCENES.items():
            for seed in seeds:
                bt, br = scale * rng.uniform(0.8, 1.2), 10 * rng.uniform(0.8, 1.2)
                add_job(store, f"{scene}-teacher-{seed}", "teacher", scene, "baseline", seed, 0.6 * bt, 0.6 * br)
                add_job(store, f"{scene}-baseline-{seed}", "student", scene, "baseline", seed, bt, br)
                for method, (ft, fr, sd) in effects.items():
                    if (scene, method, seed) in failed:
                        add_failed(store, f"{scene}-{method}-{seed}", scene, method, seed)
                        continue
                    add_job(store, f"{scene}-{method}-{seed}", "student", scene, method, seed,
                            bt * ft * np.exp(rng.normal(0, sd)), br * fr * np.exp(rng.normal(0, sd)))
    return runs


def holm_reference(p: list[float]) -> list[float]:
    """statsmodels' Holm when installed (the plots extra brings it), else the textbook loop."""
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        m, order = len(p), np.argsort(p)
        out, running = np.empty(m), 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p[i]))
            out[i] = running
        return list(out)
    return list(multipletests(p, method="holm")[1])


def recompute(runs) -> dict:
    """Everything the report claims, straight from the SQLite file with pandas and scipy (no kdbench code)."""
    with sqlite3.connect(runs / "results.sqlite") as con:
        jobs = pd.read_sql_query("SELECT * FROM jobs WHERE status = 'done'", con)
        metrics = pd.read_sql_query("SELECT * FROM metrics", con)
    wide = jobs.join(metrics.pivot(index="job_id", columns="name", values="value"), on="id")
    students = wide[wide["kind"] == "student"]
    out: dict = {"ci": {}, "tests": {}, "friedman": {}}
    for (scene, kind, method), rows in wide.groupby(["scene", "kind", "method"]):
        for m, col in (("t", "median_t"), ("r", "median_r")):
            x = np.log(rows[col].to_numpy())  # the interval of the geometric mean: never below zero
            out["ci"][(scene, kind, method, m)] = np.exp(sst.t.interval(0.95, len(x) - 1, loc=x.mean(),
                                                                        scale=sst.sem(x)))
    base = students[students["method"] == "baseline"]
    methods = sorted(set(students["method"]) - {"baseline"})
    units = {s: [s] for s in SCENES} | {AVERAGE: list(SCENES)}
    for unit, scenes in units.items():
        ps, keys = [], []
        for m, col in (("t", "median_t"), ("r", "median_r")):
            for method in methods:
                rows = students[(students["method"] == method) & students["scene"].isin(scenes)]
                pairs = rows.merge(base, on=["scene", "seed"], suffixes=("", "_b"))
                d = np.log(pairs[col]) - np.log(pairs[f"{col}_b"])
                p = sst.ttest_rel(np.log(pairs[col]), np.log(pairs[f"{col}_b"])).pvalue
                lo, hi = sst.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sst.sem(d))
                out["tests"][(unit, method, m)] = {"n": len(pairs), "p": p, "change": 100 * np.expm1(d.mean()),
                                                   "lo": 100 * np.expm1(lo), "hi": 100 * np.expm1(hi),
                                                   "wilcoxon": sst.wilcoxon(d).pvalue}
                ps.append(p)
                keys.append((unit, method, m))
        for key, adj in zip(keys, holm_reference(ps)):  # one family: methods x translation and rotation
            out["tests"][key]["holm"] = adj
    for m, col in (("t", "median_t"), ("r", "median_r")):
        # blocks are scenes, each row's seeds averaged by geometric mean (Demšar's independent data sets)
        block = np.exp(students.assign(lv=np.log(students[col])).pivot_table(index="scene", columns="method",
                                                                           values="lv", aggfunc="mean"))
        res = sst.friedmanchisquare(*[block[c] for c in block.columns])
        ranks = block.apply(sst.rankdata, axis=1, result_type="expand").mean()
        ranks.index = block.columns
        rank_matrix = block.apply(sst.rankdata, axis=1, result_type="expand").to_numpy()
        out["friedman"][m] = (res.statistic, exact_friedman_p(rank_matrix), len(block), ranks.to_dict())
    return out


def exact_friedman_p(ranks: np.ndarray) -> float:
    """The exact permutation p of Friedman's statistic: every permutation of the ranks within every block but
    the first (small cases only)."""
    import itertools

    n, k = ranks.shape
    observed = (ranks.sum(axis=0) ** 2).sum()
    perms = list(itertools.permutations(range(k)))
    hits = total = 0
    for combo in itertools.product(perms, repeat=n - 1):
        sums = ranks[0] + sum(ranks[i + 1][list(p)] for i, p in enumerate(combo))
        hits += (sums ** 2).sum() >= observed - 1e-9
        total += 1
    return hits / total


def json_report(runs, capsys) -> dict:
    assert main(["report", "--runs-dir", str(runs), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def check_report_equals_recomputation(doc: dict, expected: dict) -> None:
    acc = pd.DataFrame(doc["accuracy"])
    for (scene, kind, method, m), (lo, hi) in expected["ci"].items():
        row = acc[(acc["scene"] == scene) & (acc["role"] == kind) & (acc["method"] == method)].iloc[0]
        assert [row[f"{m}_ci_lo"], row[f"{m}_ci_hi"]] == pytest.approx([lo, hi], rel=1e-10)
    sig = pd.DataFrame(doc["significance"])
    sig = sig[sig["level"] != "scenes"].set_index(["scene", "method", "metric"])  # seeds per scene; pooled
    assert len(sig) == len(expected["tests"])
    for key, e in expected["tests"].items():
        got = sig.loc[key]
        assert got["n_pairs"] == e["n"]
        assert [got["p"], got["p_holm"], got["wilcoxon_p"]] == pytest.approx([e["p"], e["holm"], e["wilcoxon"]],
                                                                             rel=1e-9)
        assert [got["change_pct"], got["ci_lo_pct"], got["ci_hi_pct"]] == pytest.approx(
            [e["change"], e["lo"], e["hi"]], rel=1e-9)
        assert bool(got["significant"]) == (e["holm"] < 0.05)
        # The table's mark is the test's decision per scene; the average column's is the scene-level test's,
        # which 2 scenes cannot have (the pooled test's mark there was the defect: a claim about these scenes).
        scene, method, m = key
        cell = acc[(acc["scene"] == scene) & (acc["method"] == method)].iloc[0]
        assert bool(cell[f"sig_{m}"]) == (e["holm"] < 0.05 and scene != AVERAGE)
    friedman = pd.DataFrame(doc["friedman"]).set_index("metric")
    for m, (stat, p, n_blocks, ranks) in expected["friedman"].items():
        got = friedman.loc[m]
        assert got["statistic"] == pytest.approx(stat, rel=1e-10)
        assert got["p"] == pytest.approx(p, abs=0.01)  # Monte Carlo permutation p against the exact one
        assert got["n_blocks"] == n_blocks
        labels = {f"resnet18 {k}" if k != "baseline" else "resnet18 baseline (no KD)": v for k, v in ranks.items()}
        assert got["mean_ranks"] == pytest.approx(labels, rel=1e-12)


# the report equals scipy -----------------------------------------------------------------------------------------
def test_report_equals_independent_scipy_recomputation(tmp_path, capsys):
    runs = make_store(tmp_path / "runs")
    expected = recompute(runs)
    doc = json_report(runs, capsys)
    check_report_equals_recomputation(doc, expected)
    # The constructed effects come out, pooled over 6 pairs: sckd lower in translation, rkd higher in rotation.
    sig = pd.DataFrame(doc["significance"])
    pooled = sig[(sig["level"] == "pooled") & sig["significant"]]
    assert sorted(zip(pooled["method"], pooled["metric"], pooled["direction"])) == [
        ("rkd", "r", "worse"), ("sckd", "r", "better"), ("sckd", "t", "better")]
    summary = " ".join(doc["summary"]["synthetic"])
    # 2 scenes: a claim about these scenes, never "significantly better" (that is the scene-level claim's)
    assert "2 scenes are too few for a scene-level claim" in summary and "significantly better" not in summary
    assert "on these 2 scenes: resnet18 sckd's translation error is lower" in summary
    assert "resnet18 rkd's rotation error is higher" in summary
    assert "over up to 6 (scene, seed) pairs (3 seeds)" in summary
    assert "Holm-corrected over the 8 tested comparisons (4 methods x translation and rotation)" in summary


def test_markdown_marks_and_caption(tmp_path, capsys):
    runs = make_store(tmp_path / "runs")
    assert main(["report", "--runs-dir", str(runs)]) == 0
    md = capsys.readouterr().out
    leaderboard = md.split("Against the student alone")[0]
    lines = {ln.split("|")[1].strip(): ln for ln in leaderboard.splitlines() if ln.startswith("| resnet18")}
    cells = {label: [c.strip() for c in ln.split("|")[1:-1]] for label, ln in lines.items()}
    # method | Room t | Room r | Room Δ | Street t | Street r | Street Δ | average t | average r | average Δ | n
    # | failed; the average Δ has no † with 2 scenes (too few for the scene-level test)
    assert cells["resnet18 sckd"][9].startswith("-3") and "†" not in cells["resnet18 sckd"][9]
    assert cells["resnet18 sckd"][10] == "3" and cells["resnet18 sckd"][11] == "0/6"
    assert "[" in cells["resnet18 sckd"][1] and "±" not in cells["resnet18 sckd"][1]  # geometric mean [95%]
    # Every Δ part carries † exactly where the test behind the column, Holm-corrected, makes a claim.
    comparison = stats.headline(stats.compare_to_baseline(load_results(runs)))
    comparison = comparison.assign(significant=comparison["direction"] != "").set_index(
        ["scene", "method", "metric"])
    for method in ("vanilla", "sckd", "rkd", "hint"):
        for i, scene in ((3, "SynthRoom"), (6, "SynthStreet"), (9, AVERAGE)):
            t_part, r_part = cells[f"resnet18 {method}"][i].split(" / ")
            assert t_part.endswith("†") == comparison.loc[(scene, method, "t"), "significant"]
            assert r_part.endswith("†") == comparison.loc[(scene, method, "r"), "significant"]
    assert "resnet18 sckd's translation error is lower" in md


def test_three_seed_tiny_run_equals_scipy(tiny_data_root, tmp_path, capsys, one_thread):
    """The real pipeline: 3 seeds on both synthetic scenes (tiny sizes), the report against scipy."""
    runs = tmp_path / "runs"
    code = main(["run", "--seeds", "1", "--methods", "baseline,vanilla,sckd", "--scenes", "synthetic", "--seeds", "3",
                 "--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28", "--runs-dir",
                 str(runs), "--data-root", str(tiny_data_root), "--quiet"])
    assert code == 0
    capsys.readouterr()
    expected = recompute(runs)
    assert {k[1] for k in expected["tests"]} == {"vanilla", "sckd"}
    assert all(e["n"] == 3 for k, e in expected["tests"].items() if k[0] != AVERAGE)
    doc = json_report(runs, capsys)
    check_report_equals_recomputation(doc, expected)
    assert "over up to 6 (scene, seed) pairs (3 seeds)" in " ".join(doc["summary"]["synthetic"])


test_three_seed_tiny_run_equals_scipy = pytest.mark.slow(test_three_seed_tiny_run_equals_scipy)


# pieces ----------------------------------------------------------------------------------------------------------
def test_holm_matches_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = list(rng.uniform(0, 0.2, rng.integers(1, 9)))
        np.testing.assert_allclose(stats.holm(p), holm_reference(p), rtol=1e-12)
    assert np.isnan(stats.holm([0.01, float("nan"), 0.04])[1])
    np.testing.assert_allclose(stats.holm([0.01, float("nan"), 0.04])[[0, 2]], [0.02, 0.04])


def test_mean_ci_is_the_t_interval():
    x = [0.4, 0.55, 0.47]
    assert stats.mean_ci(x) == pytest.approx(sst.t.interval(0.95, 2, loc=np.mean(x), scale=sst.sem(x)))
    assert all(np.isnan(stats.mean_ci([0.4])))


# words -----------------------------------------------------------------------------------------------------------
def _summary(runs) -> str:
    sig = stats.analyse(load_results(runs))
    return " ".join(sig.sentences["synthetic"])


def test_one_seed_says_no_claim(tmp_path):
    text = _summary(make_store(tmp_path / "runs", seeds=(0,)))
    assert "on these 2 scenes: with one seed no claim can be made" in text
    assert "2 scenes are too few for a scene-level claim" in text
    assert "significantly better" not in text and "significantly worse" not in text


def test_none_significant_says_so(tmp_path):
    effects = {m: (1.0, 1.0, 0.15) for m in ("vanilla", "sckd", "hint")}
    runs = make_store(tmp_path / "runs", effects=effects, rng_seed=11)
    comparison = stats.compare_to_baseline(load_results(runs))
    tested = comparison[comparison["level"] != "scenes"]  # 2 scenes: no scene-level test
    assert tested["tested"].all() and not comparison["significant"].any()
    assert not comparison.loc[comparison["level"] == "scenes", "tested"].any()
    text = _summary(runs)
    assert ("Synthetic scenes, on these 2 scenes: no method's error differs significantly from the resnet18 "
            "student alone's (paired t-test on log error ratios over up to 6 (scene, seed) pairs (3 seeds), "
            "Holm-corrected over the 6 tested comparisons (3 methods x translation and rotation) at 0.05") in text


def test_one_significant_is_named_with_its_numbers(tmp_path):
    effects = {"vanilla": (1.0, 1.0, 0.15), "sckd": (0.6, 1.0, 0.01)}
    runs = make_store(tmp_path / "runs", effects=effects, rng_seed=5)
    comparison = stats.compare_to_baseline(load_results(runs))
    pooled = comparison[(comparison["level"] == "pooled") & comparison["significant"]]
    assert list(zip(pooled["method"], pooled["metric"])) == [("sckd", "t")]
    r = pooled.iloc[0]
    text = _summary(runs)
    assert (f"Synthetic scenes, on these 2 scenes: resnet18 sckd's translation error is lower ({r.change_pct:+.0f}%, "
            f"95% CI {r.ci_lo_pct:+.0f}% to {r.ci_hi_pct:+.0f}%") in text
    assert "no other difference is significant" in text
    assert round(r.change_pct) == -40


def test_comparison_uses_matched_pairs_only(tmp_path):
    """A method run on fewer seeds than the baseline is compared on the seeds both have, and says so."""
    runs = make_store(tmp_path / "runs")
    with ResultsStore(runs) as store:
        for scene in SCENES:
            add_job(store, f"{scene}-extra", "student", scene, "baseline", 7, 100.0, 100.0)
    comparison = stats.compare_to_baseline(load_results(runs))
    assert set(comparison.loc[comparison["scene"] == AVERAGE, "n_pairs"]) == {6}


# the estimator's frames ------------------------------------------------------------------------------------------
def test_log_ratios_keep_failed_pairs_and_scene_effects_average_seeds(tmp_path):
    runs = make_store(tmp_path / "runs", failed={("SynthRoom", "sckd", 2)})
    with ResultsStore(runs) as store:  # sckd diverges on one SynthRoom seed and fails on another
        store.finish_job("SynthRoom-sckd-0", {"median_t": float("inf"), "median_r": float("nan")})
        store.record_failure("SynthRoom-sckd-1", "diverged")  # a done job's failed rerun keeps its result
    pairs = stats.log_ratios(load_results(runs))
    assert list(pairs.columns) == stats.PAIR_COLUMNS
    assert len(pairs) == 2 * 3 * 4 * 2  # scenes x seeds x methods x metrics: no pair dropped
    room = pairs[(pairs["method"] == "sckd") & (pairs["scene"] == "SynthRoom")].set_index(["seed", "metric"])
    assert room["failed"].to_dict() == {(s, m): s != 1 for s in (0, 1, 2) for m in ("t", "r")}
    assert room["log_ratio"].isna().to_dict() == room["failed"].to_dict()
    ok = pairs[pairs["usable"]]
    np.testing.assert_allclose(ok["log_ratio"], np.log(ok["error"] / ok["base_error"]), rtol=1e-12)
    effects = stats.scene_effects(pairs).set_index(["method", "metric", "scene"])
    sckd = effects.loc[("sckd", "t", "SynthRoom")]
    assert (sckd["n_pairs"], sckd["n_failed"], sckd["n_used"]) == (3, 2, 1)
    assert sckd["log_ratio"] == pytest.approx(room.loc[(1, "t"), "log_ratio"])
    street = pairs[(pairs["method"] == "rkd") & (pairs["scene"] == "SynthStreet") & (pairs["metric"] == "r")]
    assert effects.loc[("rkd", "r", "SynthStreet"), "log_ratio"] == pytest.approx(street["log_ratio"].mean())
