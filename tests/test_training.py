"""Training loop and evaluation: loss goes down, exact resume, determinism, non-finite loss, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.methods import GroundTruth, Method, PoseLoss, register_method
from kdbench.methods.registry import _REGISTRY
from kdbench.models import PoseNet
from kdbench.runners.evaluate import metrics_from_predictions
from kdbench.runners.train import load_checkpoint, load_model, train
from kdbench.scenes.cache import load_split_cache
from kdbench.scenes.dataset import PoseDataset


def _weights(path):
    return load_checkpoint(path)["model"]


def _train_set_loss(model, cfg, data_root):
    ds = PoseDataset(load_split_cache(cfg.scene, data_root, "train", cfg.load_size), cfg.crop_size, train=False)
    x, pose = next(ds.batches(len(ds), shuffle=False))
    with torch.no_grad():
        return float(PoseLoss(cfg.beta)(model.eval()(x), GroundTruth(pose[:, :3], pose[:, 3:])))


def test_loss_goes_down_and_outputs_are_written(tiny_data_root, tmp_path):
    cfg = tiny_config(epochs=6)
    torch.manual_seed(cfg.seed)
    initial = PoseNet(cfg.arch)  # the same initialisation train() starts from
    res = train(cfg, tiny_data_root, tmp_path / "run")
    trained, _ = load_model(res.checkpoint)
    before, after = _train_set_loss(initial, cfg, tiny_data_root), _train_set_loss(trained, cfg, tiny_data_root)
    assert after < 0.5 * before
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics == pytest.approx(res.metrics)
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(preds) == 8 and np.isclose(preds["err_t"].median(), metrics["median_t"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["hash"] == cfg.hash()


def test_metrics_equal_independent_numpy_computation():
    rng = np.random.default_rng(0)
    gt = np.concatenate([rng.normal(size=(9, 3)), rng.normal(size=(9, 4))], 1)
    gt[:, 3:] /= np.linalg.norm(gt[:, 3:], axis=1, keepdims=True)
    pred = gt + rng.normal(scale=0.2, size=gt.shape)
    metrics, table = metrics_from_predictions(pred, gt, [f"im{i}" for i in range(9)])
    err_t, err_r = [], []
    for p, g in zip(pred, gt):
        err_t.append(np.sqrt(sum((p[k] - g[k]) ** 2 for k in range(3))))
        qp, qg = p[3:] / np.sqrt((p[3:] ** 2).sum()), g[3:]
        dot = abs(sum(qp[k] * qg[k] for k in range(4)))
        err_r.append(2 * np.degrees(np.arccos(min(1.0, dot))))
    assert metrics["median_t"] == pytest.approx(sorted(err_t)[4])
    assert metrics["median_r"] == pytest.approx(sorted(err_r)[4])
    assert metrics["mean_t"] == pytest.approx(sum(err_t) / 9)
    share = sum(1 for t, r in zip(err_t, err_r) if t < 0.5 and r < 5) / 9
    assert metrics["acc_0.5m_5deg"] == pytest.approx(share)
    assert list(table["image"]) == [f"im{i}" for i in range(9)]


def test_same_seed_same_metrics(tiny_data_root, tmp_path):
    cfg = tiny_config(seed=7)
    a = train(cfg, tiny_data_root, tmp_path / "a")
    b = train(cfg, tiny_data_root, tmp_path / "b")
    assert a.metrics == b.metrics
    c = train(cfg.replace(seed=8), tiny_data_root, tmp_path / "c")
    assert c.metrics != a.metrics


class _Stop(Exception):
    pass


def test_interrupted_then_resumed_equals_uninterrupted(tiny_data_root, tmp_path):
    cfg = tiny_config(epochs=3)
    full = train(cfg, tiny_data_root, tmp_path / "full")

    def stop_after_first(epoch, epochs, loss):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):  # checkpoint_every=0: save at every chance, so epoch 1's state is on disk
        train(cfg, tiny_data_root, tmp_path / "cut", on_epoch=stop_after_first, checkpoint_every=0)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    resumed = train(cfg, tiny_data_root, tmp_path / "cut")
    assert resumed.resumed_from == 1
    wa, wb = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.metrics == full.metrics


def test_checkpoint_of_another_config_is_refused(tiny_data_root, tmp_path):
    train(tiny_config(epochs=1), tiny_data_root, tmp_path / "run")
    with pytest.raises(KdbenchError, match="belongs to another configuration"):
        train(tiny_config(epochs=1, lr=0.5), tiny_data_root, tmp_path / "run")


@pytest.fixture
def nan_method():
    @register_method("test-nan-at-epoch-2")
    class NanAtEpoch2(Method):
        description = "test method whose loss turns NaN in the second epoch"
        needs_teacher = False

        def loss(self, student, teacher, gt, ctx):
            base = ctx.pose_loss(student, gt)
            return {"gt": base * float("nan") if ctx.epoch == 1 else base}

    yield "test-nan-at-epoch-2"
    _REGISTRY.pop("test-nan-at-epoch-2")


def test_non_finite_loss_stops_with_epoch_and_step(tiny_data_root, tmp_path, nan_method):
    cfg = tiny_config(epochs=3, method=nan_method)
    with pytest.raises(KdbenchError, match=r"non-finite loss at epoch 2, step 1.*last good checkpoint \(epoch 1\)"):
        train(cfg, tiny_data_root, tmp_path / "run", checkpoint_every=0)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_learned_weighting_trains_its_two_parameters(tiny_data_root, tmp_path):
    res = train(tiny_config(learn_beta=True), tiny_data_root, tmp_path / "run")
    state = load_checkpoint(res.checkpoint)["pose_loss"]
    assert set(state) == {"s_x", "s_q"}
    assert float(state["s_x"]) != 0.0 and float(state["s_q"]) != -3.0


def test_train_and_evaluate_commands(tiny_data_root, tmp_path, capsys):
    out = tmp_path / "cli-run"
    rc = main(["train", "--scene", "synthroom", "--arch", "resnet18", "--epochs", "1", "--batch-size", "4",
               "--data-root", str(tiny_data_root), "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    assert rc == 0
    assert "median_t" in capsys.readouterr().out
    model, cfg = load_model(out / "checkpoint.pt")
    assert isinstance(model, PoseNet) and cfg.scene == "SynthRoom" and cfg.epochs == 1
    rc = main(["evaluate", str(out / "checkpoint.pt"), "--scene", "SynthRoom", "--data-root",
               str(tiny_data_root), "--quiet"])
    assert rc == 0
    again = json.loads((out / "eval-SynthRoom" / "metrics.json").read_text())
    assert again["median_t"] == pytest.approx(json.loads((out / "metrics.json").read_text())["median_t"])


def test_kd_method_without_teacher_is_a_clear_error(tiny_data_root, tmp_path, capsys):
    rc = main(["train", "--scene", "SynthRoom", "--method", "vanilla", "--data-root", str(tiny_data_root),
               "--out", str(tmp_path / "x"), "--quiet"])
    assert rc == 2
    assert "needs a teacher: pass --teacher CHECKPOINT" in capsys.readouterr().err


def test_cosine_schedule_sets_each_epochs_learning_rate(tiny_data_root, tmp_path):
    from kdbench.config import epoch_lr

    assert epoch_lr(1e-3, "cosine", 0, 4) == pytest.approx(1e-3)
    assert epoch_lr(1e-3, "cosine", 2, 4) == pytest.approx(5e-4)
    assert epoch_lr(1e-3, "constant", 3, 4) == 1e-3
    cfg = tiny_config(epochs=3, lr_schedule="cosine")
    res = train(cfg, tiny_data_root, tmp_path / "run")
    assert [h["lr"] for h in res.history] == pytest.approx([epoch_lr(cfg.lr, "cosine", e, 3) for e in range(3)])
    with pytest.raises(KdbenchError, match="lr_schedule must be one of"):
        tiny_config(lr_schedule="step")
