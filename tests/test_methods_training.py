"""KD methods inside the real training loop: every method trains, stages freeze, resume keeps method state."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from kdbench.methods import registry
from kdbench.methods.attentive import Attentive
from kdbench.runners.train import load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def clean_registry():
    """Names registered by a test do not leak into other tests."""
    saved, modules = dict(registry._REGISTRY), set(sys.modules)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    for name in set(sys.modules) - modules:
        if name.startswith("kdbench_plugin_"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def teacher_ckpt(tiny_data_root, tmp_path_factory) -> Path:
    """A resnet34 teacher trained for one short epoch (quality is irrelevant here, shapes are not)."""
    cfg = tiny_config(arch="resnet34", epochs=1)
    return train(cfg, tiny_data_root, tmp_path_factory.mktemp("teacher")).checkpoint


# resnet34 -> resnet18: equal shapes at every tap, so adaptor=auto is the identity (no state).
@pytest.mark.parametrize("method,params,state_keys", [
    ("vanilla", {}, set()),
    ("attentive", {}, {"eta"}),
    ("attentive", {"adaptor": "conv-bn"}, {"eta", "adaptors.layer4.0.weight", "adaptors.layer4.1.running_mean"}),
    ("attentive", {"schedule": "joint", "hint_layer": "pool", "adaptor": "conv"}, {"eta", "adaptors.pool.0.weight"}),
    ("similarity", {"layers": "layer2,layer4"}, set()),
    ("hint", {}, {"adaptors.layer2.0.weight", "adaptors.layer2.1.weight"}),  # FitNet: layer2, ConvReg
    ("hint", {"layers": "layer4", "adaptor": "auto"}, set()),
    ("sckd", {}, set()),
    ("sckd", {"adaptor": "conv", "hint_layers": "layer3,embed"},
     {"adaptors.layer3.0.weight", "adaptors.embed.0.weight"}),
    ("rkd", {}, set()),
    ("pkt", {}, set()),
    ("at", {}, set()),
])
def test_every_method_trains(tiny_data_root, tmp_path, teacher_ckpt, method, params, state_keys):
    cfg = tiny_config(method=method, method_params=params, epochs=2)
    res = train(cfg, tiny_data_root, tmp_path / "run", teacher_checkpoint=teacher_ckpt, max_steps=2)
    assert all(math.isfinite(h["loss"]) for h in res.history)
    assert all(math.isfinite(v) for v in res.metrics.values())
    state = load_checkpoint(res.checkpoint)["method"]
    assert state_keys <= set(state)
    adapted = {k.split(".")[1] for k in state if k.startswith("adaptors.")}
    assert adapted == {k.split(".")[1] for k in state_keys if k.startswith("adaptors.")}
    if "eta" in state_keys:
        assert float(state["eta"]) > 0


def train_with_snapshots(tiny_data_root, tmp_path, teacher_ckpt, params, epochs):
    """Train attentive; return the student's state (on the CPU) at the start of every epoch and at the end."""
    snaps: dict[int, dict[str, torch.Tensor]] = {}

    @registry.register_method("attentive_probe")
    class Probe(Attentive):
        def frozen(self, student, epoch, epochs):
            snaps[epoch] = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
            return super().frozen(student, epoch, epochs)

    cfg = tiny_config(method="attentive_probe", method_params=params, epochs=epochs)
    res = train(cfg, tiny_data_root, tmp_path / "run", teacher_checkpoint=teacher_ckpt)
    return snaps, load_checkpoint(res.checkpoint)["model"]  # read to the CPU: compare on one device


def changed(a, b, prefixes):
    return {k for k in a if k.startswith(prefixes) and not torch.equal(a[k], b[k])}


STAGE1 = ("trunk.conv1.", "trunk.bn1.", "trunk.layer1.", "trunk.layer2.")  # up to a layer2 hint
REST = ("trunk.layer3.", "trunk.layer4.", "head.", "fc_xyz.", "fc_q.")


def test_two_stage_frozen_layers_do_not_change(tiny_data_root, tmp_path, teacher_ckpt):
    """stage2=after-hint (the paper): stage 2 leaves stage 1's layers (BN statistics too) alone."""
    params = {"hint_layer": "layer2", "stage1": 0.2, "stage2": "after-hint"}  # 3 epochs: stage 1 = epoch 0
    snaps, final = train_with_snapshots(tiny_data_root, tmp_path, teacher_ckpt, params, 3)
    # Stage 1 (epoch 0) trains up to the hint layer only.
    assert changed(snaps[0], snaps[1], REST) == set()
    assert "trunk.layer1.0.bn1.running_mean" in changed(snaps[0], snaps[1], STAGE1)
    # Stage 2 (epochs 1 and 2) leaves those layers exactly as stage 1 left them, and trains the rest.
    assert any("running_mean" in k for k in final if k.startswith(STAGE1))
    assert changed(snaps[1], final, STAGE1) == set()
    assert {"fc_xyz.weight", "trunk.layer3.0.bn1.running_mean"} <= changed(snaps[1], final, REST)


def test_two_stage_default_trains_the_trunk_in_stage2(tiny_data_root, tmp_path, teacher_ckpt):
    """The default stage 2 (all) trains the whole student, so the trunk sees the pose loss."""
    snaps, final = train_with_snapshots(tiny_data_root, tmp_path, teacher_ckpt, {}, 3)  # hint at layer4
    assert changed(snaps[0], snaps[1], ("head.", "fc_xyz.", "fc_q.")) == set()  # stage 1: up to layer4 only
    moved = changed(snaps[1], final, ("trunk.", "fc_xyz."))
    assert {"trunk.conv1.weight", "trunk.layer1.0.conv1.weight", "trunk.layer4.1.bn2.running_var",
            "fc_xyz.weight"} <= moved


def test_two_stage_with_one_epoch_trains_the_head(tiny_data_root, tmp_path, teacher_ckpt):
    """epochs = 1: stage 1 is skipped (with a warning) so the one epoch trains the pose head with L_ail."""
    with pytest.warns(UserWarning, match="stage 1 .* is skipped"):
        snaps, final = train_with_snapshots(tiny_data_root, tmp_path, teacher_ckpt, {}, 1)
    assert {"fc_xyz.weight", "fc_q.weight", "head.0.weight", "trunk.conv1.weight"} <= changed(
        snaps[0], final, ("trunk.", "head.", "fc_xyz.", "fc_q."))


@pytest.mark.parametrize("method", ["sckd", "attentive"])
def test_resume_restores_method_state(tiny_data_root, tmp_path, teacher_ckpt, method):
    """Adaptors and eta come back from the checkpoint: interrupted + resumed equals uninterrupted."""
    params = {"schedule": "joint", "adaptor": "conv"} if method == "attentive" else {"adaptor": "conv-bn"}
    cfg = tiny_config(method=method, epochs=2, method_params=params)
    full = train(cfg, tiny_data_root, tmp_path / "full", teacher_checkpoint=teacher_ckpt, max_steps=2)

    class Stop(Exception):
        pass

    def stop(epoch, epochs, loss):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):  # checkpoint_every=0: epoch 1's state is saved before the stop
        train(cfg, tiny_data_root, tmp_path / "cut", teacher_checkpoint=teacher_ckpt, max_steps=2,
              on_epoch=stop, checkpoint_every=0)
    resumed = train(cfg, tiny_data_root, tmp_path / "cut", teacher_checkpoint=teacher_ckpt, max_steps=2)
    assert resumed.resumed_from == 1
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    for k in a["method"]:
        assert torch.equal(a["method"][k], b["method"][k]), k
    assert resumed.metrics == pytest.approx(full.metrics)


def test_readme_plugin_trains(tiny_data_root, tmp_path, teacher_ckpt):
    section = README.read_text().split("## Add a KD method", 1)[1].split("\n## ", 1)[0]
    (tmp_path / "my_kd.py").write_text(re.findall(r"```python\n(.*?)```", section, re.S)[0])
    registry.load_plugin(tmp_path / "my_kd.py")
    cfg = tiny_config(method="my_kd", method_params={"weight": 3.0}, epochs=1)
    res = train(cfg, tiny_data_root, tmp_path / "run", teacher_checkpoint=teacher_ckpt, max_steps=3)
    assert math.isfinite(res.history[0]["loss"])
    state = load_checkpoint(res.checkpoint)["method"]
    assert set(state) == {"adaptor.weight", "adaptor.bias"}


def test_attentive_eta_from_training_crops(tiny_data_root, tmp_path, teacher_ckpt):
    """eta_crops=train takes eta over the random training crops Phi sees; centre (the default) over centre crops."""
    etas = {}
    for crops in ("centre", "train"):
        cfg = tiny_config(method="attentive", method_params={"eta_crops": crops, "schedule": "joint"}, epochs=1)
        res = train(cfg, tiny_data_root, tmp_path / crops, teacher_checkpoint=teacher_ckpt, max_steps=1)
        etas[crops] = float(load_checkpoint(res.checkpoint)["method"]["eta"])
    assert etas["centre"] > 0 and etas["train"] > 0
    assert etas["centre"] != pytest.approx(etas["train"], rel=1e-6)  # other crops, other teacher errors
