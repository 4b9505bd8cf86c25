"""Every supported backbone family: stage taps (strides, channels at 224 px), 2 sckd steps from a resnet34
teacher, ONNX export matching onnxruntime; methods across families; names, aliases, bad input."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from kdbench.errors import KdbenchError
from kdbench.methods import GroundTruth, LossContext, PoseLoss, create_method, resolved_params
from kdbench.models import FAMILIES, STAGES, PoseNet, canonical_tap, family_of
from kdbench.models.stages import body_blocks

SMALLEST = [f.members[0] for f in FAMILIES]
# Channels of stem, stage1..stage4 (torchvision's architectures: the papers' tables).
CHANNELS = {
    "resnet18": (64, 64, 128, 256, 512), "resnext50_32x4d": (64, 256, 512, 1024, 2048),
    "wide_resnet50_2": (64, 256, 512, 1024, 2048), "regnet_x_400mf": (32, 32, 64, 160, 400),
    "mobilenet_v2": (16, 24, 32, 96, 1280), "mobilenet_v3_small": (16, 16, 24, 48, 576),
    "efficientnet_b0": (16, 24, 40, 112, 1280), "efficientnet_v2_s": (24, 48, 64, 160, 1280),
    "mnasnet0_5": (8, 16, 24, 48, 1280), "shufflenet_v2_x0_5": (24, 24, 48, 96, 1024),
    "convnext_tiny": (96, 96, 192, 384, 768),
}


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return PoseNet("resnet34").eval()


def test_family_table_is_torchvision_names():
    names = set(tvm.list_models(module=tvm))
    for fam in FAMILIES:
        assert set(fam.members) <= names, fam.name
    assert set(CHANNELS) == set(SMALLEST)


def _block_strides(model: PoseNet, size: int) -> dict[str, tuple[int, int]]:
    """Every body block's (stride, channels) at `size` px, by hooks independent of the stage plan."""
    out = {}
    handles = [model.trunk.get_submodule(b).register_forward_hook(
        lambda _m, _i, y, b=b: out.__setitem__(b, (size // y.shape[2], y.shape[1]))) for b in
        body_blocks(model.trunk, model.family)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return out


@pytest.mark.parametrize("arch", SMALLEST)
def test_family_stages_train_and_export(arch, teacher, tmp_path, one_thread):
    from kdbench.profile import check_onnx_parity, export_onnx

    torch.manual_seed(0)
    model = PoseNet(arch)
    # stage taps at 224 px: each the last block at its stride, with the family's channels
    with torch.device("meta"):
        meta = PoseNet(arch).eval() if family_of(arch).name != "regnet" else None
    probe = meta if meta is not None else model.eval()
    device = next(probe.parameters()).device
    out = probe(torch.zeros(1, 3, 224, 224, device=device), taps=("stem", *STAGES, "pool"))
    for name, stride in zip(("stem", *STAGES), (2, 4, 8, 16, 32)):
        f = out.features[name]
        expected_stride = 4 if name == "stem" and family_of(arch).name == "convnext" else stride
        assert f.shape[2:] == (224 // expected_stride,) * 2, (arch, name, tuple(f.shape))
    assert tuple(out.features[n].shape[1] for n in ("stem", *STAGES)) == CHANNELS[arch]
    assert out.features["pool"].shape == (1, CHANNELS[arch][-1])
    # the BatchNorm momentum the family declares (it decides bn_stats="auto") is torchvision's
    momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    declared = family_of(arch).bn_momentum
    assert sorted(momenta) == ([pytest.approx(declared)] if declared is not None else []), (arch, momenta)
    if meta is None:
        blocks = _block_strides(model, 224)
        order = list(blocks)
        for stage, stride in zip(STAGES, (4, 8, 16, 32)):
            i = order.index(model.stages.taps[canonical_tap(stage)].module)
            assert blocks[order[i]][0] == stride and all(blocks[b][0] != stride for b in order[i + 1:])
    # two sckd steps at 64 px from a resnet34 teacher
    method = create_method("sckd", resolved_params("sckd"))
    x = torch.randn(4, 3, 64, 64)
    gt = GroundTruth(torch.randn(4, 3), torch.nn.functional.normalize(torch.randn(4, 4), dim=1))
    model.train()
    with torch.no_grad():
        t_out = teacher(x, taps=method.teacher_taps())
    method.setup(model(x, taps=method.student_taps()), t_out)
    opt = torch.optim.Adam(list(model.parameters()) + list(method.parameters()), 1e-4)
    before = model.fc_xyz.weight.detach().clone()
    ctx = LossContext(PoseLoss(1.0), 0, 1)
    for _ in range(2):
        terms = method.loss(model(x, taps=method.student_taps()), t_out, gt, ctx)
        assert set(terms) == {"gt", "sc", "hint"} and all(torch.isfinite(v) for v in terms.values())
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    assert not torch.equal(before, model.fc_xyz.weight)
    # ONNX of the trained model matches onnxruntime to 1e-4
    model.eval()
    # (TorchScript exporter: the torch.export one takes ~30 s a model here; test_onnx_default_exporter uses it)
    path = export_onnx(model, tmp_path / f"{arch}.onnx", 1, 64, exporter="torchscript")
    assert check_onnx_parity(model, path, 1, 64) <= 1e-4


@pytest.mark.slow
def test_onnx_default_exporter_on_a_mobile_family(tmp_path, one_thread):
    from kdbench.profile import check_onnx_parity, export_onnx

    model = PoseNet("mobilenet_v3_small").eval()
    path = export_onnx(model, tmp_path / "m.onnx", 1, 64)
    assert check_onnx_parity(model, path, 1, 64) <= 1e-4


@pytest.mark.parametrize("student_arch", ["mobilenet_v3_small", "efficientnet_b0"])
def test_every_builtin_method_teaches_a_mobile_student(student_arch, teacher, one_thread):
    from kdbench.methods.registry import available_methods

    torch.manual_seed(0)
    student = PoseNet(student_arch).train()
    x = torch.randn(4, 3, 64, 64)
    gt = GroundTruth(torch.randn(4, 3), torch.nn.functional.normalize(torch.randn(4, 4), dim=1))
    names = [n for n in available_methods() if n in ("baseline", "vanilla", "attentive", "similarity", "hint",
                                                       "sckd", "rkd", "pkt", "at")]
    assert len(names) == 9
    for name in names:
        method = create_method(name, resolved_params(name))
        with torch.no_grad():
            t_out = teacher(x, taps=method.teacher_taps())
        method.setup(student(x, taps=method.student_taps()), t_out)
        if method.needs_prepare:
            method.prepare([(t_out, gt)], PoseLoss(1.0))
        frozen = method.frozen(student, 0, 5)
        assert all(student.get_submodule(m) is not None for m in frozen)
        terms = method.loss(student(x, taps=method.student_taps()), t_out, gt, LossContext(PoseLoss(1.0), 0, 5))
        total = sum(terms.values())
        assert torch.isfinite(total), name
        total.backward()
    # attentive's stage 1 trains the student's blocks up to stage4 and freezes the head
    att = create_method("attentive", resolved_params("attentive"))
    frozen = att.frozen(student, 0, 5)
    assert "head" in frozen and not any(f.startswith("trunk.") for f in frozen)
    assert student.trunk_modules_up_to("stage2")[-1] == "trunk." + student.stages.taps["layer2"].module


def test_spatial_mismatch_resizes_by_the_recorded_hyperparameter(teacher):
    student = PoseNet("mobilenet_v3_small").eval()
    s = student(torch.randn(2, 3, 64, 64), taps=("layer2",))
    t = teacher(torch.randn(2, 3, 96, 96), taps=("layer2",))  # 8x8 against 12x12
    hint = create_method("hint", {"layers": "stage2"})
    assert hint.layers == ("layer2",)  # stored in the v0.2 spelling: one job id for both names
    hint.setup(s, t)
    assert hint.adaptors["layer2"](s.features["layer2"]).shape == t.features["layer2"].shape
    with pytest.raises(KdbenchError, match="resize=none; set resize=bilinear"):
        create_method("hint", {"layers": "layer2", "resize": "none"}).setup(s, t)
    with pytest.raises(KdbenchError, match="adaptor=identity needs equal widths.*use adaptor=auto or conv"):
        create_method("sckd", {"adaptor": "identity"}).setup(
            student(torch.randn(2, 3, 64, 64), taps=("layer2", "layer4")),
            teacher(torch.randn(2, 3, 64, 64), taps=("layer2", "layer4")))


def test_added_resize_keeps_stored_ids():
    from kdbench.config import make_config

    base = dict(scene="SynthRoom", arch="resnet18", role="student", seed=1, method="sckd", teacher_hash="abc",
                teacher_arch="resnet34", data="fp1")
    params = resolved_params("sckd")
    assert params["resize"] == "bilinear"
    cfg = make_config(preset="quick", method_params=params, **base)
    assert cfg.hash() == "40e0154324bd"  # tests/test_identity.py's v0.2 id
    staged = resolved_params("sckd", {"sc_layers": "stage2", "hint_layers": "stage4"})
    assert make_config(preset="quick", method_params=staged, **base).hash() == cfg.hash()
    moved = resolved_params("sckd", {"resize": "pool"})
    assert make_config(preset="quick", method_params=moved, **base).hash() != cfg.hash()


def test_plan_runs_each_student_arch_against_one_teacher():
    from kdbench.runners.plan import make_plan, parse_methods, parse_seeds
    from kdbench.scenes import resolve_scenes

    jobs = make_plan(parse_methods("baseline,vanilla,sckd"), resolve_scenes("SynthRoom"), parse_seeds("0,1"),
                     "resnet34", "mobilenet_v3_small,efficientnet_b0,resnet18")
    teachers = [j for j in jobs if j.kind == "teacher"]
    students = [j for j in jobs if j.kind == "student"]
    assert len(teachers) == 2 and len(students) == 2 * 3 * 3
    for t in teachers:
        mine = [j for j in students if j.cfg.seed == t.cfg.seed and j.cfg.teacher_hash]
        assert {j.teacher_id for j in mine} == {t.id} and {j.cfg.arch for j in mine} == \
            {"mobilenet_v3_small", "efficientnet_b0", "resnet18"}
    single = make_plan(parse_methods("sckd"), resolve_scenes("SynthRoom"), [0], "resnet34", "resnet18")
    assert single[1].id in {j.id for j in jobs}  # a resnet18 student keeps its id in a multi-arch plan


def test_bad_architecture_tap_and_weights_are_one_line(tmp_path, capsys):
    from conftest import one_line_error

    from kdbench.cli import main

    err = one_line_error(capsys, main(["run", "--student-arch", "mobilenet_v3,resnet18", "--dry-run"]))
    assert "unknown architecture 'mobilenet_v3' (nearest: mobilenet_v3_" in err and "efficientnet_b0" in err
    err = one_line_error(capsys, main(["models", "--archs", "efficientnet_b9"]))
    assert "nearest: efficientnet_b" in err
    with pytest.raises(KdbenchError, match="'stage5'.*mobilenet_v3_small PoseNet has stem, stage1"):
        PoseNet("mobilenet_v3_small")(torch.zeros(1, 3, 64, 64), taps=("stage5",))
    path = tmp_path / "r18.pth"
    torch.save(tvm.resnet18(weights=None).state_dict(), path)
    err = one_line_error(capsys, main(["run", "--student-arch", "mobilenet_v3_small", "--weights",
                                       f"mobilenet_v3_small={path}", "--methods", "baseline", "--seeds", "1",
                                       "--runs-dir", str(tmp_path / "runs"), "--quiet"]))
    assert "does not match a torchvision mobilenet_v3_small" in err


def test_models_command_lists_stage_channels_and_strides(capsys):
    from kdbench.cli import main

    assert main(["models", "--archs", "mobilenet_v3_small,resnet18"]) == 0
    out = capsys.readouterr().out
    assert "576 ch /32 (7 px) features.12" in out and "128 ch /8 (28 px) layer2" in out
    assert "convnext: convnext_tiny" in out
    assert "after the last epoch for mobilenet_v3 (momentum 0.01), mnasnet (momentum 0.0003);" in out


def test_front_marks_pareto_points_and_ratios_to_the_teacher(tmp_path):
    import pandas as pd

    from kdbench.reports.front import device_points, pareto_mask, with_teacher_latency

    assert pareto_mask([1, 2, 3, 2], [3, 1, 0.5, 2]) == [True, True, True, False]
    avg = pd.DataFrame({"arch": ["resnet34", "resnet18", "resnet18", "mobilenet_v3_small"],
                        "method": ["baseline", "baseline", "sckd", "sckd"],
                        "role": ["teacher", "student", "student", "student"],
                        "teacher_arch": ["", "", "resnet34", "resnet34"],
                        "t_mean": [0.3, 0.5, 0.45, 0.6], "r_mean": [5.0, 7.0, 8.0, 6.0]})
    eff = pd.DataFrame({"arch": ["resnet34", "resnet18", "mobilenet_v3_small"], "device": "cpu",
                        "backend": "onnxruntime", "batch": 1, "crop": 224,
                        "latency_median_ms": [30.0, 15.0, 3.0], "estimated": 0, "note": ""})
    points = device_points(avg, eff)[("cpu", "onnxruntime", 224)]
    front_t = set(points.loc[points["on_front_t"], "arch"] + ":" + points.loc[points["on_front_t"], "method"])
    assert front_t == {"resnet34:baseline", "resnet18:sckd", "mobilenet_v3_small:sckd"}
    front_r = set(points.loc[points["on_front_r"], "arch"] + ":" + points.loc[points["on_front_r"], "method"])
    assert front_r == {"resnet34:baseline", "mobilenet_v3_small:sckd"}
    ratios = dict(zip(eff["arch"], with_teacher_latency(eff, avg)["vs_teacher"]))
    assert ratios == {"resnet34": "", "resnet18": "0.50x resnet34", "mobilenet_v3_small": "0.10x resnet34"}


def test_report_draws_the_front_per_device(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scikit_posthocs")
    from test_reports import _add_job

    from kdbench.reports.leaderboard import load_profiles, load_results, render
    from kdbench.reports.plots import write_plots
    from kdbench.reports.store import ResultsStore

    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:
        for seed in (0, 1):
            _add_job(store, runs, f"t{seed}", "teacher", "SynthRoom", "baseline", "resnet34", seed,
                     {"median_t": 0.3, "median_r": 5.0})
            for arch, t in (("resnet18", 0.5), ("mobilenet_v3_small", 0.7)):
                for method in ("baseline", "sckd"):
                    _add_job(store, runs, f"{arch}-{method}-{seed}", "student", "SynthRoom", method, arch, seed,
                             {"median_t": t + 0.01 * seed, "median_r": 6.0})
        store.add_profiles([{"arch": a, "backend": "onnxruntime", "device": "Test CPU (cpu)", "batch": 1,
                             "crop": 224, "params": p, "size_mb": p * 4 / 2**20, "gflops": g,
                             "latency_median_ms": ms, "latency_p90_ms": ms, "runs": 50, "note": "fp32"}
                            for a, p, g, ms in (("resnet34", 21.8e6, 7.3, 30.0), ("resnet18", 11.7e6, 3.6, 15.0),
                                                ("mobilenet_v3_small", 1.5e6, 0.12, 2.4))])
    df, profiles = load_results(runs), load_profiles(runs)
    names = [p.name for p in write_plots(df, profiles, tmp_path / "plots", runs_dir=runs)]
    assert "front-synthetic-Test_CPU__cpu__onnxruntime_224.png" in names
    text = render(df, profiles, "markdown")
    assert "0.08x resnet34" in text and "0.50x resnet34" in text
    # the leaderboard is the first table; the claims table after it is ordered by metric, then by row
    leaderboard = next(block for block in text.split("\n\n") if block.startswith("| method"))
    lines = [ln for ln in leaderboard.splitlines() if "mobilenet_v3_small" in ln or "resnet18" in ln]
    archs = [("m" if "mobilenet" in ln else "r") for ln in lines if "baseline" in ln or "sckd" in ln]
    assert archs == sorted(archs, key=["r", "m"].index)  # rows grouped by student architecture
    # a sentence about the group (one scene is too few) once, not once per student architecture
    assert text.count("one scene is too few for a scene-level claim") == 1
    assert "than the resnet18 student alone" in text and "than the mobilenet_v3_small student alone" in text


def test_profile_measures_every_architecture_of_the_results(tmp_path, capsys, one_thread):
    from test_reports import _add_job

    from kdbench.cli import main
    from kdbench.reports.leaderboard import load_profiles
    from kdbench.reports.store import ResultsStore

    runs = tmp_path / "runs"
    with ResultsStore(runs) as store:
        m = {"median_t": 0.3, "median_r": 4.0}
        _add_job(store, runs, "t0", "teacher", "SynthRoom", "baseline", "resnet34", 0, m)
        _add_job(store, runs, "s0", "student", "SynthRoom", "sckd", "mobilenet_v3_small", 0, m)
    assert main(["profile", "--archs", "results", "--backends", "torch", "--crop", "32", "--runs", "50",
                 "--runs-dir", str(runs), "--force"]) == 0
    assert set(load_profiles(runs)["arch"]) == {"resnet34", "mobilenet_v3_small"}
    err = one_line_error_of(capsys, main(["profile", "--archs", "results", "--runs-dir", str(tmp_path / "none")]))
    assert "no results store" in err


def one_line_error_of(capsys, rc):
    from conftest import one_line_error

    return one_line_error(capsys, rc)


def test_front_labels_close_points_of_one_arch_once_top_to_bottom():
    pytest.importorskip("matplotlib")
    import pandas as pd

    from kdbench.reports.plots import front_figure

    points = pd.DataFrame({"arch": ["resnet18"] * 3 + ["resnet34"], "role": ["student"] * 3 + ["teacher"],
                           "method": ["baseline", "sckd", "vanilla", "baseline"],
                           "latency_median_ms": [15.0, 15.0, 15.0, 32.0], "t_mean": [0.52, 0.53, 0.90, 0.45],
                           "r_mean": [10.1, 11.4, 10.15, 9.0]})
    points["on_front_t"] = points["on_front_r"] = [True, False, False, True]
    fig = front_figure(points, "test")
    t_ax, r_ax = fig.axes[:2]
    assert sorted(a.get_text() for a in t_ax.texts) == ["sckd\nbaseline", "teacher", "vanilla"]
    assert sorted(a.get_text() for a in r_ax.texts) == ["sckd", "teacher", "vanilla\nbaseline"]


def test_front_plot_caption_names_the_device_not_students():
    from kdbench.reports.html import plot_caption

    caption = plot_caption("front-synthetic-Test_CPU__cpu__onnxruntime_224")
    assert caption.startswith("Synthetic scenes (Test CPU cpu onnxruntime 224): accuracy-latency front")
    assert "students" not in caption.split(":")[0]
    assert plot_caption("profile-synthetic-resnet18").startswith("Synthetic scenes (resnet18 students): ")
