"""SCKD's setting: teacher and student settings per preset, SCKD's input normalisation, every preset field
reachable from `kdbench run`, `kdbench run --config` and `kdbench train`."""

import re
from dataclasses import fields

import numpy as np
import pytest
import torch

from kdbench.cli import main
from kdbench.config import Preset, get_preset, make_config
from kdbench.errors import KdbenchError

# Preset field -> (flag, text on the command line, value the job's TrainConfig gets)
RUN_FLAGS = {
    "load_size": ("--load-size", "40", 40), "crop_size": ("--crop", "30", 30),
    "teacher_batch_size": ("--teacher-batch-size", "5", 5), "student_batch_size": ("--student-batch-size", "6", 6),
    "teacher_lr": ("--teacher-lr", "0.002", 0.002), "student_lr": ("--student-lr", "0.003", 0.003),
    "teacher_epochs": ("--teacher-epochs", "3", 3), "student_epochs": ("--student-epochs", "2", 2),
    "weight_decay": ("--weight-decay", "0.01", 0.01), "weights": ("--weights", "none", "none"),
    "beta": ("--beta", "123", 123.0), "lr_schedule": ("--lr-schedule", "constant", "constant"),
    "pose_loss": ("--pose-loss", "mean", "mean"), "adam_eps": ("--adam-eps", "0.5", 0.5),
    "head_init": ("--head-init", "sckd", "sckd"), "normalize": ("--normalize", "sckd", "sckd"),
}
NOT_SETTINGS = {"name", "description", "normalize_reason"}


def _cfg_value(cfg, field: str):
    role = next((r for r in ("teacher", "student") if field.startswith(r + "_")), None)
    name = field.split("_", 1)[1] if role else field
    return role, getattr(cfg, name)


def test_quick_preset_keeps_one_setting_for_both_roles():
    p = get_preset("quick")
    assert (p.teacher_lr, p.student_lr, p.teacher_batch_size, p.student_batch_size) == (1e-3, 1e-3, 32, 32)
    assert p.normalize == "imagenet"


def test_role_overrides_win_over_plain_ones_for_their_role_only():
    kw = dict(lr=0.01, student_lr=0.02, teacher_batch_size=9, epochs=4, teacher_epochs=6)
    s = make_config("SynthRoom", "resnet18", "paper", role="student", **kw)
    t = make_config("SynthRoom", "resnet34", "paper", role="teacher", **kw)
    assert (s.lr, s.batch_size, s.epochs) == (0.02, 75, 4)
    assert (t.lr, t.batch_size, t.epochs) == (0.01, 9, 6)
    with pytest.raises(KdbenchError, match="role must be one of"):
        get_preset("paper").for_role("judge")


def test_run_flags_reach_every_preset_field(tiny_data_root, tmp_path, monkeypatch):
    assert set(RUN_FLAGS) == {f.name for f in fields(Preset)} - NOT_SETTINGS  # a new field needs a flag
    plans = []
    monkeypatch.setattr("kdbench.runners.dryrun.print_dry_run", lambda plan, *a, **k: plans.append(plan))
    base = ["run", "--methods", "vanilla", "--scenes", "SynthRoom", "--seeds", "1", "--device", "cpu",
            "--data-root", str(tiny_data_root), "--runs-dir", str(tmp_path / "runs"), "--dry-run"]
    argv = base + [x for flag, text, _ in RUN_FLAGS.values() for x in (flag, text)]
    assert main(argv) == 0
    toml = tmp_path / "bench.toml"
    toml.write_text("".join(f'{flag[2:]} = {value!r}\n'.replace("'", '"') for flag, _, value in RUN_FLAGS.values()))
    assert main(base + ["--config", str(toml)]) == 0
    assert len(plans) == 2
    for plan in plans:
        cfgs = {j.kind: j.cfg for j in plan.jobs}
        for field, (flag, _, value) in RUN_FLAGS.items():
            for kind, cfg in cfgs.items():
                role, got = _cfg_value(cfg, field)
                if role in (None, kind):
                    assert got == value, (flag, kind)


def test_train_flags_reach_every_preset_field(tiny_data_root, tmp_path, monkeypatch):
    import kdbench.config

    made = []
    real = kdbench.config.make_config
    monkeypatch.setattr(kdbench.config, "make_config", lambda *a, **k: made.append(real(*a, **k)) or made[-1])

    def stop(*_a, **_k):
        raise KdbenchError("stopped before training (test)")

    monkeypatch.setattr("kdbench.scenes.cache.prepare_scene", stop)
    flags = {f: v for f, v in RUN_FLAGS.items() if not f.startswith(("teacher_", "student_"))}
    flags.update(student_epochs=("--epochs", "2", 2), student_batch_size=("--batch-size", "6", 6),
                 student_lr=("--lr", "0.003", 0.003))
    argv = ["train", "--scene", "SynthRoom", "--data-root", str(tiny_data_root), "--runs-dir", str(tmp_path),
            "--role", "student", "--device", "cpu"]
    assert main(argv + [x for flag, text, _ in flags.values() for x in (flag, text)]) == 2
    (cfg,) = made
    for field, (flag, _, value) in flags.items():
        assert _cfg_value(cfg, field)[1] == value, flag


def test_sckd_normalisation_is_the_pixel_minus_the_train_mean_image(tiny_data_root):
    from kdbench.scenes.cache import load_split_cache
    from kdbench.scenes.dataset import PoseDataset

    cache = load_split_cache("SynthRoom", tiny_data_root, "test", 32)
    ds = {n: PoseDataset(cache, 28, train=False, normalize=n) for n in ("sckd", "mean", "imagenet")}
    x = {n: torch.cat([b for b, _ in d.batches(8, shuffle=False)]) for n, d in ds.items()}
    h, w = cache.images.shape[1:3]
    y, xs = (h - 28) // 2, (w - 28) // 2
    crop = cache.images[:, y:y + 28, xs:xs + 28].astype(np.float32) - cache.mean[y:y + 28, xs:xs + 28]
    np.testing.assert_allclose(x["sckd"].numpy(), crop.transpose(0, 3, 1, 2), rtol=0, atol=1e-4)
    assert torch.allclose(x["mean"] * 255, x["sckd"], atol=1e-3)  # the same up to SCKD's missing /255
    assert x["sckd"].std() > 10 * x["imagenet"].std()  # 0-255 scale, no std


def test_sckd_contract_says_there_is_no_division():
    from conftest import tiny_config

    from kdbench.export import input_contract

    contract = input_contract(tiny_config(normalize="sckd"), batch=1)
    assert contract["normalize"] == "sckd" and "no /255" in contract["formula"]
    assert "train-32/split_mean.npy" in contract["formula"]


# ------------------------------------------------------------------------ no row trains another row's objective
BASIC_BLOCK = {"resnet18", "resnet34"}  # same channels per stage: adaptor `auto` is the identity between them


def _objective(name: str, params: dict, student: str = "resnet18", teacher: str = "resnet34") -> tuple:
    """What a row optimises, with the known equivalences folded in (a weight of 0 drops its term)."""
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}

    def adaptor(kind: str) -> str:
        return "identity" if kind == "auto" and {student, teacher} <= BASIC_BLOCK else kind

    if name == "sckd" and (params["alpha"] == 0 or not params["hint_layers"]):
        params = {**params, "alpha": 0.0, "hint_layers": (), "adaptor": None}
    if name == "sckd" and params["sigma"] == 0:  # SCKD's hint-only ablation is a hint objective
        if params["alpha"] == 0:
            return ("baseline",)
        return ("hint", params["hint_layers"], params["alpha"], adaptor(params["adaptor"]))
    if name == "hint":
        if params["w"] == 0:
            return ("baseline",)
        return ("hint", params["layers"], params["w"], adaptor(params["adaptor"]))
    if name == "vanilla" and params["alpha"] == 1:
        return ("baseline",)
    params = {k: adaptor(v) if k == "adaptor" else v for k, v in params.items()}
    return (name, tuple(sorted(params.items())))


def test_objective_helper_knows_the_old_hint_was_sckds_ablation():
    from kdbench.methods.registry import resolved_params

    old_hint = resolved_params("hint", {"layers": "layer4", "adaptor": "auto"})
    ablation = resolved_params("sckd", {"sigma": "0"})
    assert _objective("hint", old_hint) == _objective("sckd", ablation)
    assert _objective("hint", old_hint) != _objective("hint", resolved_params("hint", {}))


def test_no_two_rows_of_all_methods_and_ablations_are_one_objective():
    from kdbench.methods.variants import resolve_methods
    from kdbench.runners.plan import parse_methods

    rows = resolve_methods(parse_methods("all,ablations"))
    assert {"hint", "sckd:sigma=0"} <= {v.label for v in rows}
    seen: dict[tuple, str] = {}
    for v in rows:
        key = _objective(v.name, v.params)
        assert key not in seen, f"{v.label} trains the objective of {seen.get(key)}"
        seen[key] = v.label


def test_methods_lists_the_new_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    hint = out[out.index("\nhint  (teacher)"):].split("\n\n")[0]
    assert re.search(r"layers +layers +layer2 ", hint) and re.search(r"adaptor +str +conv-bn ", hint)


def test_attentive_eta_crops_default_keeps_stored_ids():
    from kdbench.methods.registry import resolved_params

    params = resolved_params("attentive")
    before = {k: v for k, v in params.items() if k != "eta_crops"}  # what attentive resolved to before it
    cfg = make_config("SynthRoom", "resnet18", method="attentive", method_params=params)
    assert cfg.hash() == cfg.replace(method_params=before).hash()
    assert cfg.replace(method_params={**params, "eta_crops": "train"}).hash() != cfg.hash()
