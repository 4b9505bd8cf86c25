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


@pytest.mark.parametrize("method,params,state_keys", [
    ("vanilla", {}, set()),
    ("attentive", {}, {"eta", "adaptors.layer4.0.weight", "adaptors.layer4.1.running_mean"}),
    ("attentive", {"schedule": "joint", "hint_layer": "pool"}, {"eta", "adaptors.pool.weight"}),
    ("similarity", {"layers": "layer2,layer4"}, set()),
    ("hint", {}, {"adaptors.layer4.0.weight", "adaptors.layer4.1.weight"}),
    ("sckd", {}, {"adaptors.layer4.0.weight"}),
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
    if "eta" in state_keys:
        assert float(state["eta"]) > 0


def test_two_stage_frozen_layers_do_not_change(tiny_data_root, tmp_path, teacher_ckpt):
    """Student snapshots at each epoch start: stage 2 leaves stage 1's layers (BN statistics too) alone."""
    snaps: dict[int, dict[str, torch.Tensor]] = {}

    @registry.register_method("attentive_probe")
    class Probe(Attentive):
        def frozen(self, student, epoch, epochs):
            snaps[epoch] = {k: v.detach().clone() for k, v in student.state_dict().items()}
            return super().frozen(student, epoch, epochs)

    params = {"hint_layer": "layer2", "stage1": 0.2}  # 3 epochs: stage 1 = epoch 0, stage 2 = epochs 1, 2
    cfg = tiny_config(method="attentive_probe", method_params=params, epochs=3)
    res = train(cfg, tiny_data_root, tmp_path / "run", teacher_checkpoint=teacher_ckpt)
    final = load_checkpoint(res.checkpoint)["model"]
    stage1 = ("trunk.conv1.", "trunk.bn1.", "trunk.layer1.", "trunk.layer2.")

    def changed(a, b, prefixes):
        return {k for k in a if k.startswith(prefixes) and not torch.equal(a[k], b[k])}

    def keys(prefixes):
        return {k for k in final if k.startswith(prefixes)}

    rest = ("trunk.layer3.", "trunk.layer4.", "head.", "fc_xyz.", "fc_q.")
    # Stage 1 (epoch 0) trains up to the hint layer only.
    assert changed(snaps[0], snaps[1], rest) == set()
    assert "trunk.layer1.0.bn1.running_mean" in changed(snaps[0], snaps[1], stage1)
    # Stage 2 (epochs 1 and 2) leaves those layers exactly as stage 1 left them, and trains the rest.
    assert any("running_mean" in k for k in keys(stage1))
    assert changed(snaps[1], final, stage1) == set()
    assert {"fc_xyz.weight", "trunk.layer3.0.bn1.running_mean"} <= changed(snaps[1], final, rest)


@pytest.mark.parametrize("method", ["sckd", "attentive"])
def test_resume_restores_method_state(tiny_data_root, tmp_path, teacher_ckpt, method):
    """Adaptors and eta come back from the checkpoint: interrupted + resumed equals uninterrupted."""
    params = {"schedule": "joint"} if method == "attentive" else {}
    cfg = tiny_config(method=method, epochs=2, method_params=params)
    full = train(cfg, tiny_data_root, tmp_path / "full", teacher_checkpoint=teacher_ckpt, max_steps=2)

    class Stop(Exception):
        pass

    def stop(epoch, epochs, loss):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tiny_data_root, tmp_path / "cut", teacher_checkpoint=teacher_ckpt, max_steps=2,
              on_epoch=stop)
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
