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
