"""Equivalence: TOST verdicts (better / practically equivalent / worse / undecided) in every report format."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pytest
from conftest import one_line_error
from scipy import stats as sst

from kdbench.cli import main
from kdbench.reports.equivalence import parse_rope, verdict
from kdbench.reports.store import ResultsStore

# method -> constant factor on the error and the SD of its log-normal noise (12 pairs: 3 scenes x 4 seeds)
EFFECTS = {"vanilla": (0.80, 0.02), "sckd": (1.00, 0.004), "rkd": (1.20, 0.02), "hint": (1.00, 0.40)}
EXPECTED = {"vanilla": "better", "sckd": "practically equivalent", "rkd": "worse", "hint": "undecided"}


def _store(runs):
    rng = np.random.default_rng(11)
    with ResultsStore(runs) as store:
        for scene, scale in (("ShopFacade", 1.5), ("KingsCollege", 4.0), ("OldHospital", 0.4)):
            for seed in range(4):
                b = scale * rng.uniform(0.8, 1.2)
                rows = {"baseline": (b, 10 * b)}
                for m, (f, sd) in EFFECTS.items():
                    rows[m] = (b * f * math.exp(rng.normal(0, sd)), 10 * b * f * math.exp(rng.normal(0, sd)))
                for m, (t, r) in rows.items():
                    job = f"{scene}-{m}-{seed}"
                    store.upsert_job({"id": job, "kind": "student", "scene": scene, "method": m, "arch": "resnet18",
                                      "teacher_arch": None if m == "baseline" else "resnet34", "seed": seed,
                                      "config": "{}", "preset": "quick", "status": "running"})
                    store.finish_job(job, {"median_t": t, "median_r": r})
    return runs


def test_verdict_rule_by_hand():
    b = math.log(1.02)
    d = np.array([-0.011, 0.004, -0.002, 0.008, -0.006, 0.001])
    v = verdict(d)
    sem, df = sst.sem(d), len(d) - 1
    assert v["p_equivalent"] == pytest.approx(max(sst.t.sf((d.mean() + b) / sem, df),
                                                  sst.t.cdf((d.mean() - b) / sem, df)))
    assert v["verdict"] == "practically equivalent"
    # the 90% interval inside (-b, b) is the same decision
    lo, hi = sst.t.interval(0.90, df, d.mean(), sem)
    assert -b < lo and hi < b
    assert verdict(d - 0.1)["verdict"] == "better" and verdict(d + 0.1)["verdict"] == "worse"
    assert verdict([0.01, -0.3, 0.4])["verdict"] == "undecided"
    assert verdict([-0.1])["verdict"] == "undecided"  # one pair: nothing can be said
    # no spread: the point decides
    assert verdict([-0.1] * 4)["verdict"] == "better"
    assert verdict([0.0] * 4)["verdict"] == "practically equivalent"
    # a wider ROPE turns a 3% change from better into equivalent
    assert verdict(d - 0.03, 0.02)["verdict"] == "better"
    assert verdict(d - 0.03, 0.10)["verdict"] == "practically equivalent"


@pytest.mark.parametrize("fmt", ["markdown", "terminal", "csv", "json"])
def test_verdicts_in_every_format(fmt, tmp_path, capsys):
    runs = _store(tmp_path)
    argv = ["report", "--runs-dir", str(runs), "--format", fmt] + (["--table", "claims"] if fmt == "csv" else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        got = {(r["method"], r["metric"]): r["verdict"] for r in json.loads(out)["claims"]}
        assert json.loads(out)["rope_pct"] == 2
    elif fmt == "csv":
        got = {(r["method"], r["metric"]): r["verdict"] for r in csv.DictReader(io.StringIO(out))}
    else:
        got = {}
        for line in out.splitlines():
            for m in EXPECTED:
                for metric, word in (("t", "translation"), ("r", "rotation")):
                    if f"resnet18 {m} " in line and word in line:
                        got[(m, metric)] = next(v for v in ("practically equivalent", "better", "worse", "undecided")
                                                if v in line)
    assert got == {(m, x): v for m, v in EXPECTED.items() for x in ("t", "r")}


def test_verdicts_in_html(tmp_path, capsys):
    runs = _store(tmp_path / "runs")
    assert main(["report", "--runs-dir", str(runs), "--format", "html", "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "index.html").read_text()
    assert 'id="claims-' in page
    claims = page[page.index('id="claims-'):]
    claims = claims[:claims.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", claims)
    got = {}
    for row in rows[1:]:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        got[(cells[0], cells[1])] = cells[3]
    assert got == {(f"resnet18 {m}", w): v for m, v in EXPECTED.items() for w in ("translation", "rotation")}


def test_rope_option_changes_the_verdict(tmp_path, capsys):
    runs = _store(tmp_path)
    assert main(["report", "--runs-dir", str(runs), "--format", "json", "--rope", "30%"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {(r["method"], r["metric"]): r["verdict"] for r in doc["claims"]}
    assert doc["rope_pct"] == 30
    # -20% and +20% are inside ±30%: now practically equivalent
    assert got[("vanilla", "t")] == got[("rkd", "t")] == "practically equivalent"


@pytest.mark.parametrize("value", ["0%", "abc", "150%"])
def test_bad_rope_is_one_line(value, tmp_path, capsys):
    runs = _store(tmp_path)
    rc = main(["report", "--runs-dir", str(runs), "--rope", value])
    assert f"--rope {value!r}" in one_line_error(capsys, rc)


def test_parse_rope():
    assert parse_rope("2%") == pytest.approx(0.02) and parse_rope("0.05") == pytest.approx(0.05)
