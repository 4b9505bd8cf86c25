"""Method variants as leaderboard rows: syntax, canonical labels, groups, the plan, the store, the CLI."""

from __future__ import annotations

import pytest

from kdbench.cli import build_parser, main
from kdbench.errors import KdbenchError
from kdbench.methods.variants import all_methods
from kdbench.reports.store import ResultsStore
from kdbench.runners.plan import Job, make_plan, parse_methods
from kdbench.scenes import resolve_scenes

TINY_ARGS = ["--epochs", "1", "--batch-size", "4", "--load-size", "32", "--crop", "28", "--quiet"]


def test_variant_forms_give_canonical_labels():
    got = parse_methods("baseline, sckd, sckd:sigma=0, sckd[alpha=0.0], sckd:sc_layers=layer2+5, "
                        "sckd:sigma=100, sckd:alpha=0:sigma=5, sckd[sigma=5.0,alpha=0], hint:adaptor=auto")
    assert got == ["baseline", "sckd", "sckd:sigma=0", "sckd:alpha=0", "sckd:sc_layers=layer2+layer4",
                   "sckd:sigma=5:alpha=0", "hint:adaptor=auto"]
    # bool and string values, keys in the method's declaration order
    assert parse_methods("sckd:zero_diagonal=0:divergence=mse") == ["sckd:divergence=mse:zero_diagonal=false"]


def test_groups_expand_and_combine_without_duplicates():
    assert parse_methods("ablations") == ["sckd", "sckd:sigma=0", "sckd:alpha=0"]
    assert parse_methods("all") == all_methods()
    both = parse_methods("all,ablations,sckd:alpha=0")
    assert both == all_methods() + ["sckd:sigma=0", "sckd:alpha=0"]
    assert all_methods()[:6] == ["baseline", "vanilla", "attentive", "similarity", "hint", "sckd"]


@pytest.mark.parametrize("arg,match", [
    ("sckd:alpha", r"'alpha' is not KEY=VALUE \(join list values with \+"),
    ("sckd:sc_layers=layer2,layer3", "unknown method 'layer3'.*looks like a layer: join list values with +"),
    ("sckd:nope=1", "--methods item 'sckd:nope=1': method 'sckd' has no hyperparameter nope"),
    ("sckd:sigma=big", "not a valid float"),
    ("sckd:sigma=1:sigma=2", "sigma is given twice"),
    ("sckdd:alpha=0", "unknown method 'sckdd'.*Did you mean sckd"),
    ("sckd[alpha=0", r"expected NAME\[KEY=VALUE,...\]"),
    (":alpha=0", "no method name"),
])
def test_bad_variants_are_clear_errors(arg, match):
    with pytest.raises(KdbenchError, match=match):
        parse_methods(arg)


def test_plan_labels_variants_and_shares_identical_work():
    scenes = resolve_scenes("SynthRoom")
    jobs = make_plan(parse_methods("baseline,ablations"), scenes, [0])
    students = [j for j in jobs if j.kind == "student"]
    assert [j.method for j in students] == ["baseline", "sckd", "sckd:sigma=0", "sckd:alpha=0"]
    assert [j.cfg.method for j in students] == ["baseline", "sckd", "sckd", "sckd"]
    assert [(j.cfg.method_params["sigma"], j.cfg.method_params["alpha"]) for j in students[1:]] == \
        [(100.0, 100.0), (0.0, 100.0), (100.0, 0.0)]
    assert len({j.id for j in students}) == 4 and len({j.teacher_id for j in students[1:]}) == 1
    # The label is not part of the job's identity: a variant with its method's defaults is the same job.
    plain = make_plan(["sckd"], scenes, [0])[-1]
    assert students[1].id == plain.id
    assert Job("student", plain.cfg, plain.teacher_id, "any label").id == plain.id
    # --set is the base of every row of its method; a variant's own keys win; labels are against that base.
    jobs = make_plan(["sckd", "sckd:alpha=0", "sckd:sigma=7", "sckd:sigma=50"], scenes, [0],
                     method_params={"sckd": {"sigma": "50"}})
    rows = {j.method: j.cfg.method_params for j in jobs if j.kind == "student"}
    assert list(rows) == ["sckd", "sckd:alpha=0", "sckd:sigma=7"]  # sigma=50 is the base: the plain row
    assert [(p["sigma"], p["alpha"]) for p in rows.values()] == [(50.0, 100.0), (50.0, 0.0), (7.0, 100.0)]
    with pytest.raises(KdbenchError, match="--set names method.*hint"):
        make_plan(["sckd:alpha=0"], scenes, [0], method_params={"hint": {"w": "1"}})


def test_run_writes_one_row_per_variant(tiny_data_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["run", "--seeds", "1", "--methods", "baseline,sckd:alpha=0,sckd[sigma=0]", "--scenes", "SynthRoom",
            "--runs-dir", str(runs), "--data-root", str(tiny_data_root), *TINY_ARGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    with ResultsStore(runs) as store:
        rows = store.jobs()
    students = {r["method"]: r for r in rows if r["kind"] == "student"}
    assert set(students) == {"baseline", "sckd:alpha=0", "sckd:sigma=0"}
    assert all(r["status"] == "done" for r in rows) and len(rows) == 4
    assert "sckd:alpha=0" in out and "sckd:sigma=0" in out
    # Asked again under another spelling, the same work is reused, not redone.
    m = args.index("--methods") + 1
    assert main([*args[:m], "baseline,sckd[alpha=0.0],sckd:sigma=0.0", *args[m + 1:]]) == 0
    with ResultsStore(runs) as store:
        assert len(store.jobs()) == 4


def test_help_and_methods_listing_explain_variants(capsys):
    run_help = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "NAME:KEY=VALUE" in run_help and "ablations" in run_help
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "ablations  sckd, sckd:sigma=0, sckd:alpha=0" in out
    assert "--methods baseline,sckd,sckd:sigma=0,sckd:alpha=0" in out


def test_dry_run_lists_variant_rows(tmp_path, capsys):
    args = ["run", "--seeds", "1",
            "--methods", "baseline,ablations", "--scenes", "SynthRoom", "--dry-run", "--runs-dir",
            str(tmp_path / "runs"), "--data-root", str(tmp_path / "data"), *TINY_ARGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert all(f" {label} " in out for label in ("sckd", "sckd:sigma=0", "sckd:alpha=0"))
    assert not (tmp_path / "runs").exists()
