"""The data path of training: where batches are cut, converted and normalised.

- `DeviceBatches`: the decoded uint8 split is uploaded once; crops, conversion and normalisation run on the
  device (on a GPU no batch crosses the PCIe bus, and the host does no per-step work).
- `HostBatches`: uint8 crops are cut on a background thread (pinned memory on CUDA, copied asynchronously),
  then converted and normalised on the device: a quarter of the bytes of float32 batches cross the bus.

Both follow the dataset's `BatchPlan`s, which depend on (seed, epoch) only, and both use the dataset's own
`normalize_batch`, so they give the batches `PoseDataset.batches` gives (tests/test_batches.py checks this
on CPU), and results and resume do not depend on the data path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from kdbench.errors import KdbenchError
from kdbench.scenes.dataset import MEAN_IMAGE_NORMALIZATIONS, BatchPlan, PoseDataset, normalize_batch

DATA_PATHS = ("auto", "device", "host")
# Share of the GPU's memory the uint8 split may take for the device-resident path; the rest is for the
# model, activations and, with --jobs-per-gpu, the other jobs. Override with $KDBENCH_DEVICE_DATA_SHARE.
DEVICE_DATA_SHARE = 0.25
PREFETCH = 2  # batches the host path cuts ahead of the one being trained on


def device_data_share() -> float:
    """The configured share of device memory for device-resident data (0..1)."""
    text = os.environ.get("KDBENCH_DEVICE_DATA_SHARE", str(DEVICE_DATA_SHARE))
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise KdbenchError(f"KDBENCH_DEVICE_DATA_SHARE={text!r}: give a share of device memory between 0 and 1")
    return share


def choose_data_path(ds: PoseDataset, device: torch.device, requested: str = "auto",
                     share: float | None = None) -> str:
    """'device' when the split fits in `share` of the GPU's memory, else 'host'; CPU training uses 'host'."""
    if requested not in DATA_PATHS:
        raise KdbenchError(f"data path must be one of {', '.join(DATA_PATHS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "host"  # on CPU a resident copy gains nothing over the memory-mapped cache
    share = device_data_share() if share is None else share
    total = torch.cuda.get_device_properties(device).total_memory
    return "device" if ds.nbytes <= share * total else "host"


def make_batches(ds: PoseDataset, device: torch.device, requested: str = "auto",
                 share: float | None = None) -> DeviceBatches | HostBatches:
    """The data path for `ds` on `device` (see `choose_data_path`)."""
    path = choose_data_path(ds, device, requested, share)
    return DeviceBatches(ds, device) if path == "device" else HostBatches(ds, device)


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cuda" else x.contiguous()


class DeviceBatches:
    """The whole uint8 split on the device; each batch is gathered there by index and crop offset."""

    kind = "device"

    def __init__(self, ds: PoseDataset, device: torch.device):
        self.ds, self.device = ds, device
        # A subset (validation parts) uploads its own rows only; plans name cache rows, mapped here to positions.
        self.position = None
        if ds.subset:
            self.position = np.full(len(ds.cache), -1, dtype=np.int64)
            self.position[ds.rows] = np.arange(len(ds.rows))
        source = ds.cache.images[ds.rows] if ds.subset else ds.cache.images
        with warnings.catch_warnings():  # the cache is a read-only memmap; the tensor made here is a copy
            warnings.simplefilter("ignore", UserWarning)
            images = torch.from_numpy(np.ascontiguousarray(source))
        self.images = images.to(device) if device.type != "cpu" or ds.subset else images.clone()
        self.poses = torch.from_numpy(ds.true_poses.astype(np.float32)).to(device)
        self.mean = (torch.from_numpy(np.ascontiguousarray(ds.cache.mean)).to(device)
                     if ds.normalize in MEAN_IMAGE_NORMALIZATIONS else None)
        self.span = torch.arange(ds.crop, device=device)

    def _cut(self, source: torch.Tensor, plan: BatchPlan, idx: torch.Tensor | None) -> torch.Tensor:
        ys = torch.as_tensor(plan.ys, device=self.device).view(-1, 1) + self.span  # (b, c) rows
        xs = torch.as_tensor(plan.xs, device=self.device).view(-1, 1) + self.span  # (b, c) columns
        rows, cols = ys[:, :, None], xs[:, None, :]
        if idx is not None:  # one crop per image of `source`; else the same (mean) image for every crop
            return source[idx.view(-1, 1, 1), rows, cols]
        return source[rows, cols]

    def batch(self, plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (b, 3, c, c) and poses (b, 7), on the device."""
        rows = plan.indices if self.position is None else self.position[plan.indices]
        idx = torch.as_tensor(rows, device=self.device)  # one host-to-device copy per step
        crops = self._cut(self.images, plan, idx)
        mean = self._cut(self.mean, plan, None) if self.mean is not None else None
        x = normalize_batch(crops, self.ds.normalize, mean)
        return _layout(x), self.poses[idx]

    def iterate(self, plans: list[BatchPlan]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `plans`, in order."""
        for plan in plans:
            yield self.batch(plan)

    def close(self) -> None:
        """Nothing runs in the background here."""


class HostBatches:
    """uint8 crops cut on a background thread, moved to the device and normalised there."""

    kind = "host"

    def __init__(self, ds: PoseDataset, device: torch.device):
        self.ds, self.device = ds, device
        self.pin = device.type == "cuda"
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kdbench-batches")

    def _cut(self, plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        crops = torch.from_numpy(self.ds.crops_uint8(plan))
        mean = self.ds.mean_crops(plan)
        mean = torch.from_numpy(mean) if mean is not None else None
        poses = self.ds.poses(plan)
        if self.pin:  # page-locked: the copy below is asynchronous and overlaps the previous step's compute
            crops, poses = crops.pin_memory(), poses.pin_memory()
            mean = mean.pin_memory() if mean is not None else None
        return crops, mean, poses

    def batch(self, plan: BatchPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch, cut in this thread (probes and evaluation)."""
        return self._finish(*self._cut(plan))

    def _finish(self, crops, mean, poses) -> tuple[torch.Tensor, torch.Tensor]:
        crops = crops.to(self.device, non_blocking=True)
        mean = mean.to(self.device, non_blocking=True) if mean is not None else None
        x = normalize_batch(crops, self.ds.normalize, mean)
        return _layout(x), poses.to(self.device, non_blocking=True)

    def iterate(self, plans: list[BatchPlan]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `plans`, in order; the next PREFETCH are cut while this one trains."""
        pending = [self.pool.submit(self._cut, p) for p in plans[:PREFETCH]]
        for k in range(len(plans)):
            cut = pending.pop(0).result()
            if k + PREFETCH < len(plans):
                pending.append(self.pool.submit(self._cut, plans[k + PREFETCH]))
            yield self._finish(*cut)

    def close(self) -> None:
        """Stop the background thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)
