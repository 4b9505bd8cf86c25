"""Images/s of the decoded-cache Dataset against decoding each file with PIL per sample.

The PIL path is what earlier PoseNet code does per sample (torchvision Resize(256), RandomCrop(224),
ToTensor, Normalize). Both produce the same tensors; the script prints both rates and their ratio.

    python benchmarks/bench_cache.py [--scene-dir ../shared/fixtures/7scenes-stairs-sample/stairs --name stairs]

Without --scene-dir it renders SynthRoom at 640x480 (the 7-Scenes frame size) into a temporary folder.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms

from kdbench.scenes.cache import load_split_cache
from kdbench.scenes.dataset import PoseDataset
from kdbench.scenes.readers import read_split


class PilDataset(torch.utils.data.Dataset):
    """Decode, resize and crop every sample from its PNG/JPEG file (the baseline)."""

    def __init__(self, frames, load_size: int, crop: int):
        self.frames = frames
        self.tf = transforms.Compose([
            transforms.Resize(load_size), transforms.RandomCrop(crop), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.frames[i].image_path) as im:
            return self.tf(im.convert("RGB")), torch.from_numpy(self.frames[i].pose.astype(np.float32))


def rate(fn, n_items: int, repeats: int) -> float:
    fn()  # warm-up (first touch of the memmap, import costs)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n_items * repeats / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene-dir", default=None)
    ap.add_argument("--name", default="SynthRoom")
    ap.add_argument("--load-size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kdbench-bench-"))
    try:
        if args.scene_dir:
            scene = tmp / Path(args.scene_dir).name
            shutil.copytree(args.scene_dir, scene)  # the cache is written inside the scene folder
        else:
            from kdbench.scenes.synth import render_scene

            scene = render_scene("SynthRoom", tmp, frames_per_seq=20, size=(640, 480), quiet=True)
        frames = read_split(scene, args.name, "train")
        t0 = time.perf_counter()
        cache = load_split_cache(args.name, split="train", load_size=args.load_size, scene_root=scene)
        build = time.perf_counter() - t0
        cached = PoseDataset(cache, args.crop, train=True)
        pil = PilDataset(frames, args.load_size, args.crop)
        n = len(frames)

        def cached_epoch():
            for _ in cached.batches(args.batch, shuffle=True):
                pass

        def pil_epoch():
            for i in range(n):
                pil[i]

        r_cache, r_pil = rate(cached_epoch, n, args.repeats), rate(pil_epoch, n, args.repeats)
        h, w = cache.images.shape[1:3]
        print(f"{n} train frames of {args.name}, cached at {w}x{h}, crop {args.crop}, batch {args.batch}")
        print(f"| loader | images/s |\n|---|---|\n| PIL decode per sample | {r_pil:.0f} |\n"
              f"| kdbench cache (memmap) | {r_cache:.0f} |")
        print(f"speed-up: {r_cache / r_pil:.1f}x (cache built once in {build:.2f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
