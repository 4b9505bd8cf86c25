"""What SCKD's input normalisation changes against ImageNet's, on a synthetic scene with ImageNet-like pixels.

    python benchmarks/bench_normalize.py --frames 40 --epochs 8 --seeds 1 --max-batch 32 --threads 1
        # the README's table: 20 minutes on 2 CPU cores shared with other work
    python benchmarks/bench_normalize.py --frames 10 --epochs 0   # parts 1 and 2 only, about a minute

Setting: a SynthRoom render (4 train + 2 test sequences x --frames, --size px) cached at 40 px, 32 px crops,
its pixels remapped per channel (affine, clipped to 0-255) to ImageNet's mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225), so that `imagenet` normalisation gives the inputs torchvision's weights were trained on.

1. Input statistics of each normalisation (train split, centre crops).
2. What the pretrained-weights argument is about. torchvision's ImageNet weights need a download, so a
   stand-in: a resnet18 (seeded init) whose BatchNorm running statistics are fitted to ImageNet-normalised
   input. Pool features under each normalisation against those under `imagenet`: cosine similarity in
   training mode (BatchNorm uses batch statistics) and in eval mode (the fitted running statistics), and the
   ratio of the stem's activation scale.
3. Training: resnet18 students from scratch, --epochs epochs, with the paper preset's student optimiser
   (Adam lr 5e-4, eps 1, weight decay 0.0625, mean-form pose loss, batch 75 capped at the split) and the
   quick preset's (Adam lr 1e-3, eps 1e-8, no decay, sum form, batch 32): median test errors per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np
import torch
from tabulate import tabulate

from kdbench.config import NORMALIZATIONS
from kdbench.methods import GroundTruth, PoseLoss
from kdbench.models import PoseNet
from kdbench.runners.evaluate import evaluate
from kdbench.scenes.cache import SplitCache, load_split_cache
from kdbench.scenes.catalog import get_scene
from kdbench.scenes.dataset import PoseDataset
from kdbench.scenes.synth import render_scene

SCENE = "SynthRoom"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
OPTIMISERS = {  # name -> (lr, eps, weight decay, pose-loss form, batch size)
    "paper student (Adam 5e-4, eps 1, wd 0.0625)": (5e-4, 1.0, 0.0625, "mean", 75),
    "quick (Adam 1e-3, eps 1e-8, wd 0)": (1e-3, 1e-8, 0.0, "sum", 32),
}


def imagenet_like(train: SplitCache, test: SplitCache) -> tuple[SplitCache, SplitCache]:
    """Both splits remapped per channel so the train pixels have ImageNet's mean and std (train statistics)."""
    px = train.images.reshape(-1, 3).astype(np.float64) / 255
    m, s = px.mean(0), px.std(0)

    def remap(images: np.ndarray) -> np.ndarray:
        x = (images.astype(np.float64) / 255 - m) / s * IMAGENET_STD + IMAGENET_MEAN
        return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)

    tr, te = remap(train.images), remap(test.images)
    mean = tr.astype(np.float64).mean(0).astype(np.float32)
    return dataclasses.replace(train, images=tr, mean=mean), dataclasses.replace(test, images=te, mean=mean)


def input_stats(cache: SplitCache, crop: int) -> list[list]:
    rows = []
    for n in NORMALIZATIONS:
        x = torch.cat([b for b, _ in PoseDataset(cache, crop, train=False, normalize=n).batches(64, shuffle=False)])
        per_channel = x.transpose(0, 1).reshape(3, -1)
        rows.append([n, f"{x.mean():.3f}", f"{x.std():.3f}",
                     " / ".join(f"{v:.3f}" for v in per_channel.std(1))])
    return rows


def _pool(model: PoseNet, x: torch.Tensor, train_mode: bool) -> tuple[torch.Tensor, torch.Tensor]:
    model.train(train_mode)
    with torch.no_grad():
        out = model(x, taps=("stem", "pool"))
    return out.features["pool"], out.features["stem"]


def pretrained_stand_in(cache: SplitCache, crop: int, seed: int) -> list[list]:
    torch.manual_seed(seed)
    model = PoseNet("resnet18")
    xs = {n: torch.cat([b for b, _ in PoseDataset(cache, crop, train=False, normalize=n).batches(64, shuffle=False)])
          for n in NORMALIZATIONS}
    for m in model.modules():  # fit the running statistics to ImageNet-normalised input (cumulative average)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    _pool(model, xs["imagenet"], True)
    for m in model.modules():  # freeze them: the training-mode passes below must not refit them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    rows = []
    ref = {mode: _pool(model, xs["imagenet"], mode) for mode in (True, False)}
    for n in NORMALIZATIONS:
        row = [n]
        for mode in (True, False):
            pool, stem = _pool(model, xs[n], mode)
            cos = torch.nn.functional.cosine_similarity(pool, ref[mode][0], dim=1).mean()
            row += [f"{cos:.4f}", f"{stem.std() / ref[mode][1].std():.2f}"]
        rows.append(row)
    return rows


def train_once(train: SplitCache, test: SplitCache, normalize: str, opt: tuple, epochs: int, crop: int,
               seed: int) -> tuple[float, float, float]:
    lr, eps, wd, form, batch = opt
    torch.manual_seed(seed)
    model = PoseNet("resnet18")
    loss_fn = PoseLoss(get_scene(SCENE).beta, form=form)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=eps, weight_decay=wd)
    ds = PoseDataset(train, crop, train=True, normalize=normalize, seed=seed)
    batch = min(batch, len(ds))
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, pose in ds.batches(batch, shuffle=True, epoch=epoch, drop_last=True):
            out = model(x)
            loss = loss_fn(out, GroundTruth(pose[:, :3], pose[:, 3:]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    metrics, _ = evaluate(model, PoseDataset(test, crop, train=False, normalize=normalize))
    return metrics["median_t"], metrics["median_r"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=60, help="frames per sequence (6 sequences)")
    ap.add_argument("--size", default="64x48", help="render size WxH")
    ap.add_argument("--load", type=int, default=40, help="cache short side")
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=15, help="training epochs of part 3 (0: skip part 3)")
    ap.add_argument("--max-batch", type=int, default=None, help="cap both optimisers' batch size (small renders)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as root:
        render_scene(SCENE, root, frames_per_seq=args.frames, size=(w, h), quiet=True)
        train = load_split_cache(SCENE, root, "train", args.load, quiet=True)
        test = load_split_cache(SCENE, root, "test", args.load, quiet=True)
        train, test = imagenet_like(train, test)
    print(f"{SCENE}, {len(train)} train / {len(test)} test frames, {args.load}/{args.crop} px, pixels remapped "
          f"to ImageNet's per-channel mean and std\n")
    print("1. Network input (train split, centre crops)")
    print(tabulate(input_stats(train, args.crop), headers=["normalize", "mean", "std", "std R / G / B"]), "\n")
    print("2. resnet18 with BatchNorm statistics fitted to ImageNet-normalised input (stand-in for pretrained "
          "weights): pool features against those under imagenet")
    print(tabulate(pretrained_stand_in(train, args.crop, 0),
                   headers=["normalize", "cos (train mode)", "stem std ratio (train)", "cos (eval mode)",
                            "stem std ratio (eval)"]), "\n")
    if args.epochs < 1:
        return
    print(f"3. resnet18 from scratch, {args.epochs} epochs: median test error, translation (m) / rotation (deg)")
    rows = []
    for opt_name, opt in OPTIMISERS.items():
        for n in NORMALIZATIONS:
            if args.max_batch:
                opt = (*opt[:4], min(opt[4], args.max_batch))
            runs = [train_once(train, test, n, opt, args.epochs, args.crop, s) for s in range(args.seeds)]
            t, r = np.array([x[0] for x in runs]), np.array([x[1] for x in runs])
            rows.append([opt_name, opt[4], n, " ".join(f"{v:.3f}" for v in t), f"{t.mean():.3f}",
                         " ".join(f"{v:.1f}" for v in r), f"{r.mean():.1f}", f"{np.mean([x[2] for x in runs]):.0f}"])
    print(tabulate(rows, headers=["optimiser", "batch", "normalize", "median t per seed", "mean", "median r per seed",
                                  "mean", "s/run"]))


if __name__ == "__main__":
    main()
