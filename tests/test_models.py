"""PoseNet: taps, hooks, weights from torchvision's API or a file, clear errors offline."""

import urllib.error

import pytest
import torch
from torchvision import models as tvm

from kdbench.errors import KdbenchError
from kdbench.fileio import torch_save_atomic
from kdbench.models import RESNETS, TAPS, PoseNet


@pytest.mark.parametrize("arch,feat", [("resnet18", 512), ("resnet50", 2048)])
def test_outputs_and_every_tap(arch, feat):
    model = PoseNet(arch).eval()
    out = model(torch.randn(2, 3, 64, 64), taps=TAPS)
    assert out.xyz.shape == (2, 3)
    assert torch.allclose(out.q.norm(dim=1), torch.ones(2))
    f = out.features
    assert set(f) == set(TAPS)
    assert f["stem"].shape[2:] == (32, 32) and f["layer4"].shape[2:] == (2, 2)
    assert f["pool"].shape == (2, feat) and f["embed"].shape == (2, 1024)
    assert torch.allclose(f["pool"], f["layer4"].mean(dim=(2, 3)), atol=1e-5)


def test_no_taps_leaves_no_hooks_and_same_pose():
    model = PoseNet("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    plain = model(x)
    tapped = model(x, taps=("layer2", "pool"))
    assert plain.features == {}
    assert torch.equal(plain.xyz, tapped.xyz)
    assert all(not m._forward_hooks for m in model.modules())


def test_all_resnets_build():
    for arch in RESNETS:  # other families: tests/test_families.py
        assert PoseNet(arch).fc_q.out_features == 4
    with pytest.raises(KdbenchError, match=r"unknown architecture 'resnet19' \(nearest: resnet18\)"):
        PoseNet("resnet19")


def test_weights_from_a_torchvision_state_dict_file(tmp_path):
    ref = tvm.resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(ref.state_dict(), path)
    model = PoseNet("resnet18", weights=path)
    assert torch.equal(model.trunk.conv1.weight, ref.conv1.weight)
    with pytest.raises(KdbenchError, match="does not match a torchvision resnet34"):
        PoseNet("resnet34", weights=path)


def test_weights_from_a_kdbench_checkpoint(tmp_path):
    src = PoseNet("resnet18")
    torch_save_atomic({"model": src.state_dict(), "config": {}}, tmp_path / "checkpoint.pt")
    model = PoseNet("resnet18", weights=tmp_path / "checkpoint.pt")
    assert torch.equal(model.fc_xyz.weight, src.fc_xyz.weight)
    with pytest.raises(KdbenchError, match="does not exist"):
        PoseNet("resnet18", weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(KdbenchError, match="could not read weights file"):
        PoseNet("resnet18", weights=tmp_path / "junk.pth")


def test_imagenet_offline_names_weights_path(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvm.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(KdbenchError, match=r"--weights PATH"):
        PoseNet("resnet18", weights="imagenet")
