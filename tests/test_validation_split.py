"""The validation split: carved from the training split only, disjoint, stable, and what val jobs score on."""

import random
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import one_line_error
from PIL import Image

from kdbench.cli import main
from kdbench.config import make_config
from kdbench.errors import KdbenchError
from kdbench.reports.leaderboard import load_results
from kdbench.reports.store import ResultsStore
from kdbench.runners import run_benchmark
from kdbench.runners.batches import DeviceBatches, HostBatches
from kdbench.scenes.cache import load_split_cache
from kdbench.scenes.dataset import PoseDataset, rows_mean
from kdbench.scenes.validation import carve, check_disjoint, natural_key, parse_rule, scene_splits

TINY = dict(epochs=1, batch_size=4, load_size=32, crop_size=28)


def _assert_partition(s, train_split: list[str]) -> None:
    """train + val + gap is exactly the train split, and no frame is in two of train, val, gap, test."""
    parts = s.parts
    assert sorted(parts["train"] + parts["val"] + parts["gap"]) == sorted(train_split)
    for a in parts:
        for b in parts:
            if a != b:
                assert not set(parts[a]) & set(parts[b]), (a, b)
    assert parts["val"] and parts["train"]


def _train_paths(root, name):
    from kdbench.scenes import read_split
    from kdbench.scenes.catalog import scene_dir

    d = scene_dir(name, root).resolve()
    return [f.image_path.relative_to(d).as_posix() for f in read_split(d, name, "train")]


def test_stairs_holds_out_its_last_training_sequence(stairs_dir, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(stairs_dir, root / "stairs")
    s = scene_splits("Stairs", root)
    _assert_partition(s, _train_paths(root, "Stairs"))
    assert s.mode == "sequences" and s.held_out == ("seq-03",)  # trains on sequence2, sequence3
    assert {p.split("/")[0] for p in s.parts["val"]} == {"seq-03"}
    assert {p.split("/")[0] for p in s.parts["test"]} == {"seq-01", "seq-04"} and not s.parts["gap"]
    assert main(["scenes", "splits", "Stairs", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "seq-03" in out and "Stairs" in out
    assert main(["scenes", "list", "--splits", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "KingsCollege" in out and "sequences seq-03" in out  # the catalog, then the splits of what is on disk


def _shopfacade(labels, root, shuffle_seed=None):
    """The real ShopFacade label files with a tiny PNG at every listed path (the fixture has no images)."""
    scene = root / "ShopFacade"
    scene.mkdir(parents=True)
    for name in ("dataset_train.txt", "dataset_test.txt"):
        lines = (labels / name).read_text().splitlines(keepends=True)
        if shuffle_seed is not None:  # the listing order must not matter
            head, body = lines[:3], lines[3:]
            random.Random(shuffle_seed).shuffle(body)
            lines = head + body
        (scene / name).write_text("".join(lines))
        for line in lines[3:]:
            if line.strip():
                path = scene / line.split()[0]
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (4, 3)).save(path)
    return scene


def test_shopfacade_holds_out_an_end_block_with_gaps(shopfacade_labels, tmp_path, capsys):
    root = tmp_path / "data"
    _shopfacade(shopfacade_labels, root)
    s = scene_splits("ShopFacade", root)
    train_split = _train_paths(root, "ShopFacade")
    _assert_partition(s, train_split)
    assert s.mode == "block" and {p.split("/")[0] for p in train_split} == {"seq2"}
    order = sorted(train_split, key=natural_key)  # frame order within seq2
    pos = {p: i for i, p in enumerate(order)}
    n, val, gap, train = len(order), sorted(pos[p] for p in s.parts["val"]), sorted(pos[p] for p in s.parts["gap"]), \
        sorted(pos[p] for p in s.parts["train"])
    assert val == list(range(n - len(val), n))  # one contiguous block ending the sequence
    assert round(0.2 * n) == len(val)
    g = len(gap) // 2
    assert g >= 1 and gap == list(range(g)) + list(range(n - len(val) - g, n - len(val)))  # both sides of the block
    assert train == list(range(g, n - len(val) - g))  # no training frame touches a validation frame
    assert s.counts == {"train": len(train), "val": len(val), "gap": len(gap), "test": 103}
    # Stable across runs and independent of the order the label file lists the frames in.
    other = scene_splits("ShopFacade", _shopfacade(shopfacade_labels, tmp_path / "shuffled", shuffle_seed=3).parent)
    assert {k: sorted(v) for k, v in other.parts.items()} == {k: sorted(v) for k, v in s.parts.items()}
    assert scene_splits("ShopFacade", root).parts == s.parts
    assert main(["scenes", "splits", "ShopFacade", "--data-root", str(root)]) == 0
    assert f"seq2 frames {n - len(val) + 1}-{n} of {n}" in capsys.readouterr().out


@pytest.mark.parametrize("scene", ["SynthRoom", "SynthStreet"])
def test_synthetic_scenes_hold_out_a_sequence(tiny_data_root, scene):
    s = scene_splits(scene, tiny_data_root)
    _assert_partition(s, _train_paths(tiny_data_root, scene))
    assert s.mode == "sequences" and len(s.held_out) == 1 and s.held_out[0].endswith("4")  # trains on 1-4
    assert s.counts["val"] == 4 and s.counts["train"] == 12


def test_rules_and_integrity_errors():
    paths = [f"seq{s}/frame{i:05d}.png" for s in (1, 2, 10) for i in range(1, 6)]
    shuffled = random.Random(0).sample(paths, len(paths))
    a, b = carve(paths), carve(shuffled)
    assert a.held_out == b.held_out == ("seq10",)  # natural order: seq10 is the last, not seq2
    assert sorted(shuffled[r] for r in b.val) == sorted(paths[r] for r in a.val)
    with pytest.raises(KdbenchError, match="seq1/frame00001.png twice"):
        carve(paths + paths[:1])
    with pytest.raises(KdbenchError, match="in both train and test"):
        check_disjoint({"train": paths[:3], "val": paths[3:5], "test": paths[2:3]})
    with pytest.raises(KdbenchError, match="too few for a validation block"):
        carve(["seq1/a.png", "seq1/b.png"])
    with pytest.raises(KdbenchError, match="strictly between 0 and 1"):
        parse_rule("holdout:fraction=1.5")
    with pytest.raises(KdbenchError, match="expected NAME:fraction=F,gap=G"):
        parse_rule("holdout:size=3")
    with pytest.raises(KdbenchError, match="unknown validation rule"):
        parse_rule("random")


def test_val_and_test_jobs_are_different_jobs():
    test = make_config("SynthRoom", "resnet18", "quick")
    val = test.replace(eval_split="val")
    assert val.val_rule == "holdout:fraction=0.2,gap=0.05" and test.val_rule is None
    assert val.hash() != test.hash()
    assert val.replace(eval_split="test").hash() == test.hash()  # back to the v0.2 id
    assert val.replace(val_rule="holdout:fraction=0.3").hash() != val.hash()  # the rule is part of a val job
    assert val.replace(val_rule="holdout:gap=0.05,fraction=0.2").hash() == val.hash()  # canonical text
    with pytest.raises(KdbenchError, match="validation fraction"):
        test.replace(eval_split="val", val_rule="holdout:fraction=0")


def test_subset_batches_equal_on_both_data_paths(tiny_data_root, one_thread):
    cache = load_split_cache("SynthRoom", tiny_data_root, "train", 32)
    split = carve(cache.image_paths)
    ds = PoseDataset(cache, 28, train=True, normalize="mean", seed=2, rows=split.train)
    assert len(ds) == 12 and set(ds.image_paths) == {cache.image_paths[r] for r in split.train}
    # 'mean' normalisation of a val job uses the mean image of the rows it trains on, not of the whole split
    np.testing.assert_allclose(rows_mean(cache.images, np.arange(len(cache)), chunk=5), cache.mean, atol=1e-4)
    train_mean = rows_mean(cache.images, split.train)
    np.testing.assert_allclose(train_mean, cache.images[split.train].mean(axis=0), atol=1e-4)
    assert not np.allclose(train_mean, cache.mean)
    plans = ds.epoch_plans(4, shuffle=True, epoch=1, drop_last=True)
    assert {int(i) for p in plans for i in p.indices} == set(split.train.tolist())  # every training row, no other
    expected = list(ds.batches(4, shuffle=True, epoch=1, drop_last=True))
    for source in (DeviceBatches(ds, torch.device("cpu")), HostBatches(ds, torch.device("cpu"))):
        for (x, pose), (ex, epose) in zip(source.iterate(plans), expected):
            assert torch.equal(x, ex) and torch.equal(pose, epose)
        source.close()


def test_val_run_scores_only_validation_frames(tiny_data_root, tmp_path, one_thread, capsys):
    runs = tmp_path / "runs"
    val = run_benchmark("baseline,vanilla", "SynthRoom", 1, runs_dir=runs, data_root=tiny_data_root, quiet=True,
                        eval_split="val", **TINY)
    assert len(val.done) == 3 and not val.failed
    s = scene_splits("SynthRoom", tiny_data_root)
    with ResultsStore(runs) as store:
        rows = store.jobs()
        assert {r["eval_split"] for r in rows} == {"val"}
        for r in rows:  # teacher and students: trained without, and scored on, the validation frames only
            pred = pd.read_csv(runs / r["run_dir"] / "predictions.csv")
            assert set(pred["image"]) == set(s.parts["val"])
            assert not set(pred["image"]) & set(s.parts["test"])
            assert store.metrics(r["id"])["n_test"] == len(s.parts["val"])
    # The same settings scored on test are other jobs; neither supersedes the other.
    test = run_benchmark("baseline", "SynthRoom", 1, runs_dir=runs, data_root=tiny_data_root, quiet=True, **TINY)
    assert len(test.done) == 1 and not test.reused
    with ResultsStore(runs) as store:
        rows = store.jobs()
        assert [r["status"] for r in rows] == ["done"] * 4
        assert sorted(r["eval_split"] for r in rows) == ["test", "val", "val", "val"]
    # Leaderboards are test-only by default; the validation rows are asked for by name.
    board = load_results(runs)
    assert list(board["id"]) == test.done
    assert set(load_results(runs, eval_split="val")["id"]) == set(val.done)
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.count(" val ") >= 3 and " test " in out
    np.testing.assert_array_equal(sorted(board["scene"]), ["SynthRoom"])


def test_train_cli_val_job_and_its_teacher(tiny_data_root, tmp_path, one_thread, capsys):
    root, runs = tmp_path / "data", tmp_path / "runs"
    shutil.copytree(tiny_data_root / "SynthRoom", root / "SynthRoom")
    base = ["train", "--scene", "SynthRoom", "--epochs", "1", "--batch-size", "4", "--data-root", str(root),
            "--runs-dir", str(runs), "--quiet"]
    assert main(base + ["--out", str(tmp_path / "t-val"), "--eval-split", "val"]) == 0
    assert "validation split (holdout:fraction=0.2,gap=0.05)" in capsys.readouterr().out
    val_frames = set(scene_splits("SynthRoom", root).parts["val"])
    assert set(pd.read_csv(tmp_path / "t-val" / "predictions.csv")["image"]) == val_frames
    assert main(base + ["--out", str(tmp_path / "t-test")]) == 0
    capsys.readouterr()
    student = base + ["--method", "vanilla", "--eval-split", "val"]
    # A teacher trained on the whole training split has seen the student's validation frames: refused.
    rc = main(student + ["--teacher", str(tmp_path / "t-test" / "checkpoint.pt"), "--out", str(tmp_path / "s1")])
    assert "has seen this student's validation frames" in one_line_error(capsys, rc)
    assert main(student + ["--teacher", str(tmp_path / "t-val" / "checkpoint.pt"), "--out", str(tmp_path / "s2")]) == 0
    with ResultsStore(runs) as store:
        assert sorted(r["eval_split"] for r in store.jobs("done")) == ["test", "val", "val"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_subset_device_batches_on_cuda(tiny_data_root):
    cache = load_split_cache("SynthRoom", tiny_data_root, "train", 32)
    split = carve(cache.image_paths)
    ds = PoseDataset(cache, 28, train=True, seed=1, rows=split.train)
    source = DeviceBatches(ds, torch.device("cuda"))
    assert source.images.shape[0] == len(split.train)  # only the training rows are uploaded
    plans = ds.epoch_plans(4, shuffle=True, epoch=2, drop_last=True)
    for (x, pose), (ex, epose) in zip(source.iterate(plans), ds.batches(4, shuffle=True, epoch=2, drop_last=True)):
        torch.testing.assert_close(x.cpu(), ex, rtol=0, atol=1e-5)
        assert torch.equal(pose.cpu(), epose)
