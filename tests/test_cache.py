"""Decoded cache and Dataset: built once, rebuilt when stale, atomic, and no decoding while training."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from kdbench.errors import KdbenchError
from kdbench.scenes.cache import cache_path, load_split_cache, prepared_sizes
from kdbench.scenes.dataset import IMAGENET_MEAN, IMAGENET_STD, PoseDataset
from kdbench.scenes.readers import read_split


@pytest.fixture
def room(tiny_data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root / "SynthRoom", root / "SynthRoom", ignore=shutil.ignore_patterns(".kdbench-cache"))
    return root


def test_cache_matches_decoded_images_and_poses(room):
    c = load_split_cache("SynthRoom", room, "train", load_size=24)
    frames = read_split(room / "SynthRoom", "SynthRoom", "train")
    assert c.images.shape == (16, 24, 32, 3) and c.images.dtype == np.uint8  # short side 24, aspect kept
    assert isinstance(c.images, np.memmap)
    assert np.allclose(c.poses, np.stack([f.pose for f in frames]), atol=1e-6)
    with Image.open(frames[3].image_path) as im:
        ref = np.asarray(im.convert("RGB").resize((32, 24), Image.BILINEAR, reducing_gap=3.0))
    assert np.array_equal(c.images[3], ref)
    assert np.allclose(c.mean, c.images.astype(np.float64).mean(0), atol=1e-3)
    test = load_split_cache("SynthRoom", room, "test", load_size=24)
    assert np.array_equal(test.mean, c.mean)  # the TRAIN mean image serves both splits
    assert prepared_sizes(room / "SynthRoom") == [24]


def test_cache_is_reused_then_rebuilt_when_sources_change(room):
    load_split_cache("SynthRoom", room, "train", load_size=24)
    images = cache_path(room / "SynthRoom", "train", 24) / "images.npy"
    stamp = images.stat().st_mtime_ns
    load_split_cache("SynthRoom", room, "train", load_size=24)
    assert images.stat().st_mtime_ns == stamp  # fresh: not rebuilt

    frame = read_split(room / "SynthRoom", "SynthRoom", "train")[0].image_path
    Image.new("RGB", (48, 36), (255, 0, 0)).save(frame)
    c = load_split_cache("SynthRoom", room, "train", load_size=24)
    assert np.all(c.images[0][..., 0] == 255)  # rebuilt from the changed image

    pose_file = frame.with_name(frame.name.replace(".color.png", ".pose.txt"))
    m = np.loadtxt(pose_file)
    m[0, 3] += 1.0
    pose_file.write_text("\r\n".join("\t".join(f"{v:e}" for v in row) for row in m) + "\r\n")
    c = load_split_cache("SynthRoom", room, "train", load_size=24)
    assert np.isclose(c.poses[0, 0], m[0, 3], atol=1e-5)  # a changed label rebuilds too


def test_interrupted_build_leaves_nothing_that_looks_complete(room, monkeypatch):
    load_split_cache("SynthRoom", room, "train", load_size=24)
    good = cache_path(room / "SynthRoom", "train", 24)
    before = (good / "images.npy").read_bytes()
    from kdbench.scenes import cache as cache_mod

    calls = {"n": 0}
    real = cache_mod._decode

    def failing(path, size, source):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("power cut")
        return real(path, size, source)

    monkeypatch.setattr(cache_mod, "_decode", failing)
    with pytest.raises(RuntimeError):
        load_split_cache("SynthRoom", room, "train", load_size=20)
    assert not cache_path(room / "SynthRoom", "train", 20).exists()
    assert not [p for p in good.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    assert (good / "images.npy").read_bytes() == before  # the other cache untouched
    assert json.loads((good / "manifest.json").read_text())["n"] == 16


def test_corrupt_image_names_the_file(room):
    frame = read_split(room / "SynthRoom", "SynthRoom", "test")[2].image_path
    frame.write_bytes(b"not a png")
    with pytest.raises(KdbenchError, match=rf"cannot decode image .*{frame.name}.*corrupt"):
        load_split_cache("SynthRoom", room, "test", load_size=24)


@pytest.mark.parametrize("split", ["train", "test"])
def test_corrupt_first_image_is_a_one_line_error(room, split):
    frame = read_split(room / "SynthRoom", "SynthRoom", split)[0].image_path
    frame.write_bytes(b"\x89PNG garbage")
    with pytest.raises(KdbenchError, match=rf"cannot decode image .*{frame.name}.*corrupt"):
        load_split_cache("SynthRoom", room, split, load_size=24)


@pytest.mark.parametrize("index", [0, 5], ids=["first-frame", "later-frame"])
def test_image_of_another_size_is_refused_by_name(room, index):
    frame = read_split(room / "SynthRoom", "SynthRoom", "train")[index].image_path
    Image.new("RGB", (1, 1), (9, 9, 9)).save(frame)
    with pytest.raises(KdbenchError) as info:
        load_split_cache("SynthRoom", room, "train", load_size=24)
    msg = str(info.value)
    assert str(frame) in msg and "is 1x1 RGB" in msg and "are 48x36 RGB" in msg and "\n" not in msg
    assert not cache_path(room / "SynthRoom", "train", 24).exists()  # nothing squashed or stretched


def test_16_bit_image_is_refused_by_name(room):
    frames = read_split(room / "SynthRoom", "SynthRoom", "train")
    Image.fromarray(np.full((36, 48), 40000, np.uint16)).save(frames[3].image_path)
    with pytest.raises(KdbenchError, match=rf"{frames[3].image_path.name} is 48x36 I;16.* are 48x36 RGB"):
        load_split_cache("SynthRoom", room, "train", load_size=24)
    for f in frames:  # a split that is 16-bit throughout is refused too, not turned white
        Image.fromarray(np.full((36, 48), 40000, np.uint16)).save(f.image_path)
    with pytest.raises(KdbenchError, match=r"mode I;16 .*convert them to 8-bit RGB"):
        load_split_cache("SynthRoom", room, "train", load_size=24)


def test_test_split_of_another_image_size_is_refused(room):
    for f in read_split(room / "SynthRoom", "SynthRoom", "test"):
        Image.new("RGB", (60, 36), (5, 5, 5)).save(f.image_path)  # consistent within the split, not with train
    with pytest.raises(KdbenchError, match=r"test images of SynthRoom decode to 30x18 but the train images to "
                                           r"24x18.*one image size"):
        load_split_cache("SynthRoom", room, "test", load_size=18)


def test_cambridge_file_without_header_keeps_every_frame(tiny_data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data_root / "SynthStreet", root / "SynthStreet",
                    ignore=shutil.ignore_patterns(".kdbench-cache"))
    for split in ("train", "test"):
        label = root / "SynthStreet" / f"dataset_{split}.txt"
        lines = label.read_text().splitlines(keepends=True)
        n = len(lines) - 3
        label.write_text("".join(lines[3:]))  # no header
        assert len(load_split_cache("SynthStreet", root, split, load_size=24)) == n == (16 if split == "train" else 8)


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())  # rich wraps long lines


@pytest.mark.parametrize("damage", ["truncate-images", "flip-images", "missing-mean", "edit-mean", "missing-manifest",
                                    "bad-manifest", "missing-poses"])
def test_damaged_cache_is_rebuilt_with_a_message(room, capsys, damage):
    good = load_split_cache("SynthRoom", room, "train", load_size=24)
    expected = np.array(good.images)
    path = good.path
    del good
    images = path / "images.npy"
    if damage == "truncate-images":
        images.write_bytes(images.read_bytes()[:-1000])
    elif damage == "flip-images":
        data = bytearray(images.read_bytes())
        data[-10] ^= 0xFF  # the last block is always sampled
        images.write_bytes(bytes(data))
    elif damage == "missing-mean":
        (path / "split_mean.npy").unlink()
    elif damage == "edit-mean":
        np.save(path / "split_mean.npy", np.zeros((24, 32, 3), np.float32))
    elif damage == "missing-manifest":
        (path / "manifest.json").unlink()
    elif damage == "bad-manifest":
        (path / "manifest.json").write_text("{not json")
    else:
        (path / "poses.npy").unlink()
    capsys.readouterr()
    c = load_split_cache("SynthRoom", room, "train", load_size=24)
    assert "cache in" in (err := _err(capsys)) and "is damaged" in err and "rebuilding it" in err
    assert np.array_equal(c.images, expected) and np.allclose(c.mean, expected.astype(np.float64).mean(0), atol=1e-3)
    load_split_cache("SynthRoom", room, "train", load_size=24)
    assert "damaged" not in _err(capsys)  # repaired for good


def test_orphan_temp_folders_are_cleaned_on_the_next_build(room, capsys):
    load_split_cache("SynthRoom", room, "train", load_size=24)
    base = room / "SynthRoom" / ".kdbench-cache"
    for name in (".train-20.x1y2.tmp", ".test-24.abcd.tmp", ".train-24.old"):  # killed builds' leftovers
        (base / name).mkdir()
        (base / name / "images.npy").write_bytes(b"\0" * 100)
    load_split_cache("SynthRoom", room, "train", load_size=24)  # reuse: builds nothing, removes nothing
    assert (base / ".train-24.old").exists()
    load_split_cache("SynthRoom", room, "train", load_size=20, quiet=False)
    assert sorted(p.name for p in base.iterdir()) == ["train-20", "train-24"]
    assert "removed 3 temporary folder(s)" in _err(capsys)


def test_data_fingerprint_follows_the_data(room, tmp_path):
    from kdbench.scenes.cache import data_fingerprint, prepare_scene

    with pytest.raises(KdbenchError, match=r"no current train cache at 24px.*kdbench scenes prepare SynthRoom"):
        data_fingerprint("SynthRoom", room, 24)
    fp = prepare_scene("SynthRoom", room, load_size=24, quiet=True)
    assert fp == data_fingerprint("SynthRoom", room, 24) and len(fp) == 16
    assert prepare_scene("SynthRoom", room, load_size=24, quiet=True) == fp  # reused: same
    assert prepare_scene("SynthRoom", room, load_size=20, quiet=True) != fp  # load size is part of it

    moved = tmp_path / "elsewhere"  # a copy (new mtimes, new place) of the same data: same fingerprint
    shutil.copytree(room / "SynthRoom", moved / "SynthRoom", ignore=shutil.ignore_patterns(".kdbench-cache"))
    assert prepare_scene("SynthRoom", moved, load_size=24, quiet=True) == fp

    frames = read_split(moved / "SynthRoom", "SynthRoom", "test")
    Image.new("RGB", (48, 36), (1, 2, 3)).save(frames[-1].image_path)  # one test image changed
    fp_image = prepare_scene("SynthRoom", moved, load_size=24, quiet=True)
    assert fp_image != fp and data_fingerprint("SynthRoom", moved, 24) == fp_image

    pose = frames[0].image_path.with_name(frames[0].image_path.name.replace(".color.png", ".pose.txt"))
    m = np.loadtxt(pose)
    m[0, 3] += 0.5
    pose.write_text("\n".join("\t".join(f"{v:e}" for v in row) for row in m) + "\n")
    fp_pose = prepare_scene("SynthRoom", moved, load_size=24, quiet=True)
    assert fp_pose not in (fp, fp_image)


def test_reuse_reads_only_the_manifest_and_samples(room, monkeypatch):
    load_split_cache("SynthRoom", room, "train", load_size=24)
    from kdbench.scenes import cache as cache_mod

    monkeypatch.setattr(cache_mod, "_decode", lambda *a: (_ for _ in ()).throw(AssertionError("rebuilt")))
    sampled = []
    real = cache_mod._sampled_digest
    monkeypatch.setattr(cache_mod, "_sampled_digest", lambda p: sampled.append(p.name) or real(p))
    load_split_cache("SynthRoom", room, "train", load_size=24)
    assert sampled == ["images.npy"]


def test_dataset_crops_and_normalisation(room, monkeypatch):
    c = load_split_cache("SynthRoom", room, "train", load_size=24)
    # After the cache exists, nothing may decode an image file.
    monkeypatch.setattr(Image, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded a file")))
    test_ds = PoseDataset(c, crop=20, train=False, normalize="imagenet")
    x, pose = test_ds[1]
    assert x.shape == (3, 20, 20) and pose.shape == (7,)
    y0, x0 = (24 - 20) // 2, (32 - 20) // 2
    ref = (c.images[1, y0:y0 + 20, x0:x0 + 20].astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    assert np.allclose(x.permute(1, 2, 0).numpy(), ref, atol=1e-5)

    mean_ds = PoseDataset(c, crop=20, train=False, normalize="mean")
    x, _ = mean_ds[1]
    ref = (c.images[1, y0:y0 + 20, x0:x0 + 20] - c.mean[y0:y0 + 20, x0:x0 + 20]) / 255.0
    assert np.allclose(x.permute(1, 2, 0).numpy(), ref, atol=1e-5)

    train_ds = PoseDataset(c, crop=20, train=True, seed=3)
    a = [b[0] for b in train_ds.batches(4, shuffle=True, epoch=2)]
    b = [b[0] for b in train_ds.batches(4, shuffle=True, epoch=2)]
    other = [b[0] for b in train_ds.batches(4, shuffle=True, epoch=3)]
    assert all((p == q).all() for p, q in zip(a, b))  # same (seed, epoch): same order and crops
    assert any((p != q).any() for p, q in zip(a, other))
    assert sum(len(t) for t in a) == 16

    with pytest.raises(KdbenchError, match="crop 30 is larger than the cached images"):
        PoseDataset(c, crop=30, train=True)
