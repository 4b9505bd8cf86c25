"""torch Dataset over a decoded SplitCache: random crop (train) or centre crop (test), normalised.

A batch is decided by a `BatchPlan` (image indices and crop offsets), a function of (seed, epoch) only, and
then cut from the uint8 cache and normalised. The runners' device-resident data path reuses the same plans
and the same `normalize_batch`, so host and device batches are equal for the same (seed, epoch).

`rows` makes a dataset of some frames of a split (the validation split's parts, kdbench/scenes/validation.py)
without a second decode: plans hold cache rows, so both data paths cut from the one cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from kdbench.config import NORMALIZATIONS
from kdbench.errors import KdbenchError
from kdbench.scenes.cache import SplitCache

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
_IMAGENET_MEAN_T = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1)
_IMAGENET_STD_T = torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1)


@dataclass(frozen=True)
class BatchPlan:
    """Which images a batch holds and where each is cropped (top-left corner)."""

    indices: np.ndarray
    ys: np.ndarray
    xs: np.ndarray


MEAN_IMAGE_NORMALIZATIONS = ("mean", "sckd")  # the ones that subtract the train split's mean image


def normalize_batch(crops: torch.Tensor, normalize: str, mean_crops: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 NHWC crops -> float32 NCHW normalised images, on whatever device `crops` lives.

    imagenet: (pixel / 255 - mean) / std per channel (what torchvision's ImageNet weights were trained on);
    mean: (pixel - mean image) / 255; sckd: pixel - mean image in the 0-255 scale, no /255 and no std
    (SCKD's and poselstm-pytorch's data/base_dataset.py). The mean image is the train split's, cut like the crop.
    """
    images = crops.permute(0, 3, 1, 2).float()
    if normalize in MEAN_IMAGE_NORMALIZATIONS:
        centred = images - mean_crops.permute(0, 3, 1, 2)
        return centred / 255.0 if normalize == "mean" else centred
    mean, std = _IMAGENET_MEAN_T.to(images.device), _IMAGENET_STD_T.to(images.device)
    return (images - mean) / std


def rows_mean(images: np.ndarray, rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """(H, W, 3) float32 mean image of some rows of a uint8 (N, H, W, 3) array, read a chunk at a time."""
    total = np.zeros(images.shape[1:], dtype=np.float64)
    for start in range(0, len(rows), chunk):
        total += images[np.sort(rows[start:start + chunk])].sum(axis=0, dtype=np.float64)
    return (total / max(len(rows), 1)).astype(np.float32)


class PoseDataset(Dataset):
    """(image CHW float32, pose (7,) float32) pairs; never decodes PNG/JPEG (the cache did that once)."""

    def __init__(self, cache: SplitCache, crop: int, train: bool, normalize: str = "imagenet", seed: int = 0,
                 rows: np.ndarray | None = None):
        h, w = cache.images.shape[1:3]
        if crop > min(h, w):
            raise KdbenchError(f"crop {crop} is larger than the cached images ({w}x{h}) of {cache.scene}: "
                               "lower the crop size or raise the load size")
        if normalize not in NORMALIZATIONS:
            raise KdbenchError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
        self.cache, self.crop, self.train, self.normalize = cache, crop, train, normalize
        self.seed = seed
        self.rng = np.random.default_rng([seed, 0])
        # Cache rows this dataset holds (None: all, in order); a subset needs no copy of the images.
        self.subset = rows is not None
        self.rows = np.arange(len(cache), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.subset and len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(cache)):
            raise KdbenchError(f"rows outside the {len(cache)} frames of the {cache.scene} {cache.split} cache")
        if self.subset and not len(self.rows):
            raise KdbenchError(f"an empty subset of the {cache.scene} {cache.split} split has nothing to train or "
                               "score")

    def set_epoch(self, epoch: int) -> None:
        """Reseed the crop generator so that every epoch's crops are reproducible (resume gives the same)."""
        self.rng = np.random.default_rng([self.seed, epoch, 1])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def image_paths(self) -> list[str]:
        """The dataset's frames (paths relative to the scene folder), in row order."""
        paths = self.cache.image_paths
        return [paths[i] for i in self.rows] if self.subset else list(paths)

    @property
    def true_poses(self) -> np.ndarray:
        """The dataset's labels (N, 7), in row order."""
        return self.cache.poses[self.rows] if self.subset else self.cache.poses

    @property
    def nbytes(self) -> int:
        """Bytes of the uint8 images this dataset holds."""
        images = self.cache.images
        return images.nbytes if not self.subset else len(self.rows) * (images.nbytes // max(len(images), 1))

    def _offsets(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.cache.images.shape[1:3]
        if self.train:
            return self.rng.integers(0, h - self.crop + 1, n), self.rng.integers(0, w - self.crop + 1, n)
        return np.full(n, (h - self.crop) // 2), np.full(n, (w - self.crop) // 2)

    def plan(self, indices: np.ndarray) -> BatchPlan:
        """Crop offsets for these images, drawn from the epoch's generator (call in batch order)."""
        indices = np.asarray(indices)
        ys, xs = self._offsets(len(indices))
        return BatchPlan(indices, ys, xs)

    def epoch_plans(self, batch_size: int, shuffle: bool, epoch: int = 0, drop_last: bool = False) -> list[BatchPlan]:
        """Every batch of one epoch; the order and crops depend only on (seed, epoch)."""
        self.set_epoch(epoch)
        order = self.rng.permutation(len(self)) if shuffle else np.arange(len(self))
        order = self.rows[order] if self.subset else order  # plans hold cache rows
        stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
        return [self.plan(order[start:start + batch_size]) for start in range(0, stop, batch_size)]

    def crops_uint8(self, plan: BatchPlan) -> np.ndarray:
        """The planned crops (b, crop, crop, 3) uint8, copied from the memory-mapped cache."""
        c = self.crop
        crops = np.empty((len(plan.indices), c, c, 3), dtype=np.uint8)  # copy uint8; convert once per batch
        for k, (i, y, x) in enumerate(zip(plan.indices, plan.ys, plan.xs)):
            crops[k] = self.cache.images[i, y:y + c, x:x + c]
        return crops

    def mean_crops(self, plan: BatchPlan) -> np.ndarray | None:
        """The train mean image cut like the batch ('mean' normalisation), else None."""
        if self.normalize not in MEAN_IMAGE_NORMALIZATIONS:
            return None
        c = self.crop
        return np.stack([self.cache.mean[y:y + c, x:x + c] for y, x in zip(plan.ys, plan.xs)])

    def poses(self, plan: BatchPlan) -> torch.Tensor:
        """The batch's poses (b, 7) float32."""
        return torch.from_numpy(self.cache.poses[plan.indices].astype(np.float32))

    def batch_from_plan(self, plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (b, 3, crop, crop) float32 and poses (b, 7), normalised on the CPU."""
        mean = self.mean_crops(plan)
        images = normalize_batch(torch.from_numpy(self.crops_uint8(plan)), self.normalize,
                                 None if mean is None else torch.from_numpy(mean))
        return images.contiguous(), self.poses(plan)

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (b, 3, crop, crop) float32 and poses (b, 7) of these cache rows, cut from the memmap."""
        return self.batch_from_plan(self.plan(indices))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, pose = self.get_batch(np.array([self.rows[index]]))
        return x[0], pose[0]

    def batches(self, batch_size: int, shuffle: bool, epoch: int = 0,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches for one epoch; the order and crops depend only on (seed, epoch)."""
        for plan in self.epoch_plans(batch_size, shuffle, epoch, drop_last):
            yield self.batch_from_plan(plan)
