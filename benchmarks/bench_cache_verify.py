"""What verifying a cache on reuse costs: the sampled checksum against re-hashing every byte, and a rebuild.

Writes a Cambridge-layout scene of N noise PNGs at 455x256 (the usual Cambridge frame size after the
256 px resize) into a temporary folder, builds its train cache at 256 px, then times:
  build         decoding every image into images.npy (what a damaged cache costs once)
  reuse check   load_split_cache on a fresh cache (labels read, sources stat'ed, manifest and sampled checks)
  sampled hash  the sampled checksum of images.npy alone
  full sha256   hashing all of images.npy (what re-hashing every image on every run would cost)
  source hash   blake2b of every source file's bytes: what the build's content digests add to reading the
                files, and what a reuse costs once after the data root was copied (every ctime new)

    python benchmarks/bench_cache_verify.py [--frames 500]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tabulate import tabulate

from kdbench.scenes.cache import _file_digest, _sampled_digest, load_split_cache


def _scene(root: Path, n: int) -> None:
    scene = root / "ShopFacade"
    (scene / "seq1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = {"train": [], "test": []}
    for i in range(n + 1):
        rel = f"seq1/frame{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (256, 455, 3), dtype=np.uint8)).save(scene / rel, compress_level=1)
        lines["test" if i == n else "train"].append(f"{rel} {i} 0 0 1 0 0 0\n")
    for split, rows in lines.items():
        (scene / f"dataset_{split}.txt").write_text("".join(rows))


def _timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _scene(root, args.frames)
        t = time.perf_counter()
        cache = load_split_cache("ShopFacade", root, "train", load_size=256)
        build = time.perf_counter() - t
        images = cache.path / "images.npy"
        mb = images.stat().st_size / 2**20
        del cache
        reuse = _timed(lambda: load_split_cache("ShopFacade", root, "train", load_size=256))
        sampled = _timed(lambda: _sampled_digest(images))
        full = _timed(lambda: hashlib.sha256(images.read_bytes()).hexdigest(), repeat=1)
        pngs = sorted((root / "ShopFacade" / "seq1").glob("*.png"))
        sources = _timed(lambda: [_file_digest(f) for f in pngs])
    rows = [["build", build], ["reuse check", reuse], ["sampled hash", sampled], ["full sha256", full],
            ["source hash", sources], ["source hash / build", sources / build]]
    print(f"{args.frames} frames, images.npy {mb:.0f} MB (times in seconds; reuse and hashes: best of 3, warm cache)")
    print(tabulate(rows, headers=["step", "seconds"], floatfmt=".3f"))


if __name__ == "__main__":
    main()
