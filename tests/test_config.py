"""Job configuration: identity (role), pose-loss forms, SCKD's head initialisation, presets, validation."""

import pytest
import torch
from torch import nn

from kdbench.config import get_preset, make_config
from kdbench.errors import KdbenchError
from kdbench.methods import GroundTruth, PoseLoss
from kdbench.models import PoseNet, PoseOutput
from kdbench.reports.store import ResultsStore
from kdbench.runners import run_benchmark


def test_self_distillation_teacher_and_baseline_student_are_different_jobs(tiny_data_root, tmp_path, one_thread):
    # Same arch and epochs for teacher and student: before, both had one id and the teacher vanished.
    res = run_benchmark("baseline,vanilla", "SynthRoom", 1, teacher_arch="resnet18", runs_dir=tmp_path,
                        data_root=tiny_data_root, quiet=True, epochs=1, batch_size=4, load_size=32, crop_size=28)
    assert len(res.jobs) == 3 and len({j.id for j in res.jobs}) == 3
    assert len(res.done) == 3
    with ResultsStore(tmp_path, create=False) as store:
        rows = store.jobs("done")
    assert sorted(r["kind"] for r in rows) == ["student", "student", "teacher"]


def test_mean_form_equals_mse_loss_and_sum_form_is_its_multiple():
    g = torch.Generator().manual_seed(0)
    xyz, xyz_gt = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q, q_gt = nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1), \
        nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    out, gt = PoseOutput(xyz, q, {}), GroundTruth(xyz_gt, q_gt)
    mse = nn.MSELoss()
    expected = mse(xyz, xyz_gt) + 500 * mse(q, q_gt)  # SCKD / poselstm
    assert torch.allclose(PoseLoss(500, form="mean")(out, gt), expected)
    expected_sum = 3 * mse(xyz, xyz_gt) + 4 * 500 * mse(q, q_gt)
    assert torch.allclose(PoseLoss(500, form="sum")(out, gt), expected_sum)
    with pytest.raises(KdbenchError, match="form"):
        PoseLoss(500, form="median")


def test_sckd_head_init_draws_the_published_scales():
    torch.manual_seed(0)
    net = PoseNet("resnet18", head_init="sckd")
    assert abs(net.head[0].weight.std().item() - 0.01) < 0.001
    assert abs(net.fc_q.weight.std().item() - 0.01) < 0.002
    assert abs(net.fc_xyz.weight.std().item() - 0.5) < 0.05
    assert net.fc_xyz.bias.abs().max().item() == 0.0
    default = PoseNet("resnet18")
    assert default.fc_xyz.weight.std().item() < 0.1  # torchvision's Linear init, not N(0, 0.5)


def test_paper_preset_is_sckds_code_setting():
    p = get_preset("paper")
    assert (p.load_size, p.crop_size, p.student_epochs) == (256, 224, 500)
    assert (p.adam_eps, p.weight_decay, p.pose_loss, p.beta, p.head_init) == (1.0, 0.0625, "mean", 500.0, "sckd")
    cfg = make_config("ShopFacade", "resnet18", "paper")
    assert (cfg.adam_eps, cfg.pose_loss, cfg.head_init, cfg.weights) == (1.0, "mean", "sckd", "imagenet")
    # SCKD's teachers at its README command; its students at KD_train.py's defaults (the command sets neither)
    teacher = make_config("ShopFacade", "resnet34", "paper", role="teacher")
    assert (teacher.lr, teacher.batch_size, cfg.lr, cfg.batch_size) == (1e-3, 32, 5e-4, 75)
    assert cfg.normalize == teacher.normalize == "sckd" and p.normalize_reason


@pytest.mark.parametrize("change, match", [
    (dict(lr=-1.0), "lr must be a positive"), (dict(seed=-1), "seed must be >= 0"),
    (dict(precision="fp8"), "precision"), (dict(pose_loss="l1"), "pose_loss"), (dict(role="judge"), "role"),
])
def test_bad_config_values_name_the_field(change, match):
    with pytest.raises(KdbenchError, match=match):
        make_config("SynthRoom", "resnet18", **change)


def test_role_is_part_of_the_hash():
    teacher = make_config("SynthRoom", "resnet18", role="teacher", epochs=3)
    student = make_config("SynthRoom", "resnet18", role="student", epochs=3)
    assert teacher.hash() != student.hash()
