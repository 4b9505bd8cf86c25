"""torch Dataset over a decoded SplitCache: random crop (train) or centre crop (test), normalised."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from kdbench.errors import KdbenchError
from kdbench.scenes.cache import SplitCache

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
_IMAGENET_MEAN_T = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1)
_IMAGENET_STD_T = torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1)


class PoseDataset(Dataset):
    """(image CHW float32, pose (7,) float32) pairs; never decodes PNG/JPEG (the cache did that once)."""

    def __init__(self, cache: SplitCache, crop: int, train: bool, normalize: str = "imagenet", seed: int = 0):
        h, w = cache.images.shape[1:3]
        if crop > min(h, w):
            raise KdbenchError(f"crop {crop} is larger than the cached images ({w}x{h}) of {cache.scene}: "
                               "lower the crop size or raise the load size")
        if normalize not in ("imagenet", "mean"):
            raise KdbenchError(f"normalize must be 'imagenet' or 'mean', got {normalize!r}")
        self.cache, self.crop, self.train, self.normalize = cache, crop, train, normalize
        self.seed = seed
        self.rng = np.random.default_rng([seed, 0])

    def set_epoch(self, epoch: int) -> None:
        """Reseed the crop generator so that every epoch's crops are reproducible (resume gives the same)."""
        self.rng = np.random.default_rng([self.seed, epoch, 1])

    def __len__(self) -> int:
        return len(self.cache)

    def _offsets(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.cache.images.shape[1:3]
        if self.train:
            return self.rng.integers(0, h - self.crop + 1, n), self.rng.integers(0, w - self.crop + 1, n)
        return np.full(n, (h - self.crop) // 2), np.full(n, (w - self.crop) // 2)

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (b, 3, crop, crop) float32 and poses (b, 7), cropping from the memory-mapped array."""
        indices = np.asarray(indices)
        ys, xs = self._offsets(len(indices))
        c = self.crop
        crops = np.empty((len(indices), c, c, 3), dtype=np.uint8)  # copy uint8; convert once per batch
        for k, (i, y, x) in enumerate(zip(indices, ys, xs)):
            crops[k] = self.cache.images[i, y:y + c, x:x + c]
        images = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
        if self.normalize == "mean":
            mean = np.stack([self.cache.mean[y:y + c, x:x + c] for y, x in zip(ys, xs)])
            images = (images - torch.from_numpy(mean).permute(0, 3, 1, 2)) / 255.0
        else:
            images = (images - _IMAGENET_MEAN_T) / _IMAGENET_STD_T
        poses = torch.from_numpy(self.cache.poses[indices].astype(np.float32))
        return images.contiguous(), poses

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, pose = self.get_batch(np.array([index]))
        return x[0], pose[0]

    def batches(self, batch_size: int, shuffle: bool, epoch: int = 0, drop_last: bool = False):
        """Yield batches for one epoch; the order and crops depend only on (seed, epoch)."""
        self.set_epoch(epoch)
        order = self.rng.permutation(len(self)) if shuffle else np.arange(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last and len(order) >= batch_size else 0)
        for start in range(0, stop, batch_size):
            yield self.get_batch(order[start:start + batch_size])
