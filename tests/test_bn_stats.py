"""BatchNorm statistics recomputed after training for slow-momentum families (TrainConfig.bn_stats), through
`kdbench train`; identity of the field; families' declared momenta (test_families checks them on the models)."""

from __future__ import annotations

import json

import pytest
import torch

from kdbench.cli import main
from kdbench.config import make_config
from kdbench.models.bn_stats import batchnorms, recompute_bn_stats

BATCH = 4


def _train(tiny_data_root, out, arch: str, *extra: str) -> tuple[dict, dict]:
    code = main(["train", "--scene", "SynthRoom", "--arch", arch, "--epochs", "1", "--batch-size", str(BATCH),
                 "--data-root", str(tiny_data_root), "--out", str(out), "--runs-dir", str(out.parent / "runs"),
                 "--device", "cpu", "--quiet", *extra])
    assert code == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    return ckpt, json.loads((out / "config.json").read_text())


def _first_bn_input_stats(model, cfg, data_root) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the batches, per channel, of the first BatchNorm's input batch mean and unbiased variance, on
    the training frames (centre crops, full batches, in order): what precise BN should have stored."""
    from kdbench.scenes.cache import load_split_cache
    from kdbench.scenes.dataset import PoseDataset

    bn = batchnorms(model)[0]
    seen = []
    handle = bn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    cache = load_split_cache(cfg.scene, data_root, "train", cfg.load_size, True)
    ds = PoseDataset(cache, cfg.crop_size, train=False, normalize=cfg.normalize, seed=cfg.seed)
    model.eval()
    with torch.no_grad():
        for x, _ in ds.batches(cfg.batch_size, shuffle=False, drop_last=True):
            model(x)
    handle.remove()
    means = torch.stack([a.mean(dim=(0, 2, 3)) for a in seen])
    variances = torch.stack([a.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for a in seen])
    return means.mean(0), variances.mean(0)


def test_mobilenet_v3_is_scored_with_statistics_recomputed_on_the_training_frames(tiny_data_root, tmp_path,
                                                                                  one_thread, capsys):
    from kdbench.runners.train import load_model

    ckpt, config = _train(tiny_data_root, tmp_path / "auto", "mobilenet_v3_small")
    assert config["bn_stats"] == "recompute"  # auto, resolved for the family's momentum 0.01
    model, cfg = load_model(tmp_path / "auto" / "checkpoint.pt")
    mean, var = _first_bn_input_stats(model, cfg, tiny_data_root)
    bn = batchnorms(model)[0]
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
    # the stored metrics are those of the stored statistics: re-evaluating the checkpoint gives them again
    metrics = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert main(["evaluate", str(tmp_path / "auto" / "checkpoint.pt"), "--data-root", str(tiny_data_root),
                 "--device", "cpu", "--out", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["median_t"] == pytest.approx(metrics["median_t"], rel=1e-6)
    assert again["median_r"] == pytest.approx(metrics["median_r"], rel=1e-6)

    # --bn-stats running: training's running averages, a job of another id (the v0.3 id of this arch)
    ckpt_run, config_run = _train(tiny_data_root, tmp_path / "running", "mobilenet_v3_small", "--bn-stats",
                                  "running")
    assert config_run["bn_stats"] == "running" and config_run["hash"] != config["hash"]
    first = next(k for k in ckpt_run["model"] if k.endswith("running_mean"))
    assert not torch.allclose(ckpt_run["model"][first], mean, rtol=1e-2, atol=1e-3)  # they lag behind
    assert torch.equal(ckpt_run["model"][first.replace("running_mean", "weight")],
                       ckpt["model"][first.replace("running_mean", "weight")])  # same training otherwise


def test_field_keeps_every_stored_id_and_resolves_per_family():
    r18 = make_config("SynthRoom", "resnet18")
    assert r18.bn_stats == "running" and "bn_stats" not in r18.identity()  # every ResNet id as before
    legacy = {k: v for k, v in make_config("SynthRoom", "mobilenet_v3_small", bn_stats="running").to_dict().items()
              if k != "bn_stats"}  # a v0.3 config.json, written before the field
    from kdbench.config import TrainConfig

    assert TrainConfig.from_dict(legacy).hash() == make_config("SynthRoom", "mobilenet_v3_small",
                                                               bn_stats="running").hash()
    for arch, expected in (("mobilenet_v3_large", "recompute"), ("mnasnet0_5", "recompute"),
                           ("efficientnet_b0", "running"), ("convnext_tiny", "running")):
        assert make_config("SynthRoom", arch).bn_stats == expected, arch
    assert make_config("SynthRoom", "resnet18", bn_stats="recompute").hash() != r18.hash()


def test_bad_bn_stats_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--scene", "SynthRoom", "--bn-stats", "precise", "--out", str(tmp_path)])
    assert "--bn-stats" in capsys.readouterr().err
    from kdbench.errors import KdbenchError

    with pytest.raises(KdbenchError, match="bn_stats must be one of auto, running, recompute"):
        make_config("SynthRoom", "resnet18", bn_stats="precise")


def test_recompute_without_batches_keeps_the_running_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.01), torch.nn.Dropout())
    model.train()
    model(torch.randn(8, 3, 8, 8))
    before = model[1].running_mean.clone()
    assert recompute_bn_stats(model, []) == 0 and torch.equal(model[1].running_mean, before)
    assert not model.training
    assert recompute_bn_stats(model, [torch.randn(8, 3, 8, 8)]) == 1
    assert model[1].momentum == 0.01 and not torch.equal(model[1].running_mean, before)  # momentum restored
    # dropout stays off while the statistics are taken: two recomputations agree exactly
    xs = [torch.randn(8, 3, 8, 8) for _ in range(3)]
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    recompute_bn_stats(model, xs)
    once = model[2].running_var.clone()
    recompute_bn_stats(model, xs)
    assert torch.equal(model[2].running_var, once)


def test_tune_study_identity_records_bn_stats_where_it_is_not_running():
    from kdbench.runners.tune import TuneOptions

    resnet = TuneOptions(seeds=[0])
    assert "bn_stats" not in resnet.setting()  # every study made before the field keeps its identity
    assert TuneOptions(seeds=[0], overrides={"bn_stats": "auto"}).setting() == resnet.setting()
    mobile = TuneOptions(seeds=[0], student_arch="mobilenet_v3_small").setting()
    assert mobile["bn_stats"] == {"resnet34": "running", "mobilenet_v3_small": "recompute"}
    forced = TuneOptions(seeds=[0], student_arch="mobilenet_v3_small", overrides={"bn_stats": "running"}).setting()
    assert "bn_stats" not in forced and forced != mobile  # what a study of such students computed before
