"""Training policies: time-based checkpoints, stop signals and exact resume, precision, history.csv, TensorBoard."""

from __future__ import annotations

import importlib
import os
import signal

import pandas as pd
import pytest
import torch
from conftest import tiny_config

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.methods import Method, register_method
from kdbench.methods.registry import _REGISTRY
from kdbench.runners.checkpoints import TrainingStopped
from kdbench.runners.precision import resolve_precision
from kdbench.runners.train import load_checkpoint, train

train_module = importlib.import_module("kdbench.runners.train")  # the package exports train()
pytestmark = pytest.mark.usefixtures("one_thread")

CALLS = {"n": 0, "action": None, "at": -1}  # what the probe method does at which loss() call


@pytest.fixture(scope="module", autouse=True)
def probe_methods():
    """Test methods: one with a KD-like second term that can stop the run, one whose gradients overflow fp16."""

    @register_method("test-probe")
    class Probe(Method):
        description = "pose loss plus a second term; can raise or send SIGTERM at a given call"
        needs_teacher = False

        def loss(self, student, teacher, gt, ctx):
            CALLS["n"] += 1
            if CALLS["n"] == CALLS["at"]:
                if CALLS["action"] == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
                elif CALLS["action"] == "crash":
                    raise RuntimeError("simulated kill")
            return {"gt": ctx.pose_loss(student, gt), "kd": 0.1 * student.xyz.pow(2).mean()}

    @register_method("test-overflow")
    class Overflow(Method):
        description = "a finite loss whose fp16 gradients overflow at any usual loss scale"
        needs_teacher = False
        hparams = {}

        def loss(self, student, teacher, gt, ctx):
            return {"gt": 1e6 * ctx.pose_loss(student, gt)}

    yield
    _REGISTRY.pop("test-probe")
    _REGISTRY.pop("test-overflow")


def _arm(action=None, at=-1):
    CALLS.update(n=0, action=action, at=at)


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_root, tmp_path_factory):
    _arm()
    cfg = tiny_config(epochs=3, method="test-probe")
    return cfg, train(cfg, tiny_data_root, tmp_path_factory.mktemp("full"), max_steps=3)


@pytest.mark.parametrize("action,every", [("sigterm", 3600.0), ("crash", 0.0)])
def test_stopped_anywhere_and_resumed_equals_uninterrupted(tiny_data_root, tmp_path, uninterrupted, action, every):
    """SIGTERM saves mid-epoch before stopping; a crash loses only what came after the last (per-step) save."""
    cfg, full = uninterrupted
    _arm(action, at=5)  # 3 steps per epoch: the 5th loss is epoch 2, step 2
    stop = TrainingStopped if action == "sigterm" else RuntimeError
    with pytest.raises(stop):
        train(cfg, tiny_data_root, tmp_path / "cut", max_steps=3, checkpoint_every=every)
    saved = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == ((1, 2) if action == "sigterm" else (1, 1))
    _arm()
    resumed = train(cfg, tiny_data_root, tmp_path / "cut", max_steps=3)
    assert resumed.resumed_from == 1
    wa, wb = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.metrics == full.metrics


def test_checkpoints_by_time_and_final_checkpoints_have_no_optimiser(tiny_data_root, tmp_path, monkeypatch):
    saves = []
    real_save = train_module.torch_save_atomic

    def counting_save(state, path):
        saves.append((state["epoch"], state["step"], "optimizer" in state))
        real_save(state, path)

    monkeypatch.setattr(train_module, "torch_save_atomic", counting_save)
    _arm()
    cfg = tiny_config(epochs=3, method="test-probe")
    train(cfg, tiny_data_root, tmp_path / "slow", max_steps=2)  # default: every 60 s
    assert saves == [(3, 0, False)]  # only the final save, weights only (a student)
    saves.clear()
    train(cfg, tiny_data_root, tmp_path / "eager", max_steps=2, checkpoint_every=0)
    assert saves == [(0, 1, True), (1, 0, True), (1, 1, True), (2, 0, True), (2, 1, True), (3, 0, False)]
    saves.clear()
    train(cfg.replace(role="teacher"), tiny_data_root, tmp_path / "teacher", max_steps=1)
    assert saves == [(3, 0, False)]  # a finished teacher too: nothing resumes a finished job
    with pytest.raises(KdbenchError, match="--checkpoint-every -1"):
        train(cfg, tiny_data_root, tmp_path / "bad", checkpoint_every=-1)


def test_history_csv_has_every_term_and_tensorboard_events(tiny_data_root, tmp_path):
    _arm()
    res = train(tiny_config(epochs=2, method="test-probe", lr_schedule="cosine"), tiny_data_root, tmp_path,
                max_steps=2)
    table = pd.read_csv(tmp_path / "history.csv")
    assert list(table["epoch"]) == [1, 2]
    assert {"loss", "loss_gt", "loss_kd", "lr", "seconds", "steps", "skipped_steps"} <= set(table.columns)
    assert table["loss"].to_numpy() == pytest.approx((table["loss_gt"] + table["loss_kd"]).to_numpy(), rel=1e-5)
    assert table["lr"][1] < table["lr"][0]  # cosine: the recorded rate is each epoch's own
    assert (table["loss_kd"] > 0).all() and (table["steps"] == 2).all() and (table["skipped_steps"] == 0).all()
    assert table["loss"].tolist() == pytest.approx([h["loss"] for h in res.history])

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss/total", "loss/gt", "loss/kd", "lr", "skipped_steps"} <= set(events.Tags()["scalars"])
    kd = events.Scalars("loss/kd")
    assert [e.step for e in kd] == [1, 2]
    assert [e.value for e in kd] == pytest.approx(table["loss_kd"].tolist(), rel=1e-6)


def test_precision_auto_resolves_per_device_and_is_validated():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision(None, "cpu") == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(KdbenchError, match="--precision 'half'"):
        resolve_precision("half", "cpu")
    with pytest.raises(KdbenchError, match="precision must be one of"):
        tiny_config(precision="auto")  # a config records what ran, never 'auto'


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_precision_auto_on_cuda_is_bf16_where_supported():
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    assert resolve_precision("auto", "cuda") == expected


def test_bf16_trains_and_is_recorded(tiny_data_root, tmp_path):
    _arm()
    cfg = tiny_config(epochs=1, method="test-probe", precision="bf16")
    res = train(cfg, tiny_data_root, tmp_path, max_steps=2)
    assert load_checkpoint(res.checkpoint)["config"]["precision"] == "bf16"
    assert res.skipped_steps == 0 and all(v == v for v in res.metrics.values())
    assert cfg.hash() != cfg.replace(precision="fp32").hash()


def test_fp16_skipped_steps_are_counted_and_all_skipped_is_an_error(tiny_data_root, tmp_path):
    cfg = tiny_config(epochs=2, method="test-overflow", precision="fp16")
    with pytest.raises(KdbenchError, match=r"skipped all 4 optimiser steps.*--precision bf16 or fp32"):
        train(cfg, tiny_data_root, tmp_path / "run", max_steps=2)
    table = pd.read_csv(tmp_path / "run" / "history.csv")
    assert table["skipped_steps"].tolist() == [2, 2]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # no model is passed off as trained


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_precisions_train_the_learned_weighting(tiny_data_root, tmp_path, precision):
    res = train(tiny_config(learn_beta=True, precision=precision), tiny_data_root, tmp_path, device="cuda")
    state = load_checkpoint(res.checkpoint)["pose_loss"]
    assert res.skipped_steps < sum(h["steps"] for h in res.history)
    assert float(state["s_x"]) != 0.0 and float(state["s_q"]) != -3.0


def test_compile_option_reaches_torch_compile_and_the_config(tiny_data_root, tmp_path, monkeypatch):
    """--compile wraps the student's forward (weights are saved from the module itself) and is recorded.

    torch.compile itself is replaced by a recording pass-through: inductor needs minutes on a small CPU, and
    what this test checks is kdbench's wiring; benchmarks/bench_gpu.py --compile measures the real thing.
    """
    compiled = []

    def fake_compile(model, **kwargs):
        compiled.append(type(model).__name__)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    out = tmp_path / "run"
    rc = main(["train", "--scene", "SynthRoom", "--epochs", "1", "--batch-size", "4", "--data-root",
               str(tiny_data_root), "--out", str(out), "--runs-dir", str(tmp_path / "runs"), "--quiet", "--compile",
               "--precision", "fp32"])
    assert rc == 0 and compiled == ["PoseNet"]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["config"]["compile"] is True and not any(k.startswith("_orig_mod") for k in ckpt["model"])
